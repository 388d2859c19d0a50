"""Where to cut a row sequence into forwards: padding against per-forward cost.

A batch holds rows of very different lengths. Padding every row to the longest wastes
compute; one forward per row wastes the fixed cost of a forward. A dynamic programme
picks the cut points that minimise ``sum(rows * longest) + forwards * forward_cost``
under a padded-frame budget. The decoder runs it on length-sorted rows; benchmarks run
it on arrival order to show what sorting buys. Pure Python on integers: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pack_cuts(lengths: Sequence[int], max_padded: int, forward_cost: int) -> list[range]:
    """Consecutive index ranges of ``lengths``, one per forward, at the least cost.

    A range's padded size is its row count times its longest row and stays within
    ``max_padded`` unless it is a single row (a row longer than the budget still runs).
    O(n * rows per forward): the inner loop stops once the budget is passed.
    """
    n = len(lengths)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = 0
        for start in range(end - 1, -1, -1):
            longest = max(longest, lengths[start])
            padded = longest * (end - start)
            if padded > max_padded and end - start > 1:
                break
            cost = best[start] + padded + forward_cost
            if cost < best[end]:
                best[end], cut[end] = cost, start
    ranges: list[range] = []
    end = n
    while end > 0:
        ranges.append(range(cut[end], end))
        end = cut[end]
    return ranges[::-1]

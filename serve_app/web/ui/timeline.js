// Words on a timeline: each word a button placed and sized by its start and end,
// shaded by confidence; two lanes so neighbours do not cover each other.

const PX_PER_SECOND = 90;

export function confidenceClass(confidence) {
  if (confidence < 0.5) return "c1";
  if (confidence < 0.8) return "c2";
  if (confidence < 0.95) return "c3";
  return "c4";
}

const clock = (s) => `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, "0")}`;

/** Fill `container` with the words; `onSeek(seconds)` when one is chosen. */
export function drawTimeline(container, words, duration, onSeek) {
  container.replaceChildren();
  const track = document.createElement("div");
  track.className = "track";
  const length = Math.max(duration, words.at(-1)?.end ?? 0, 1);
  track.style.width = `${Math.ceil(length * PX_PER_SECOND) + 40}px`;
  for (let t = 0; t <= length; t += 5) {
    const mark = document.createElement("span");
    mark.className = "ruler";
    mark.style.left = `${t * PX_PER_SECOND}px`;
    mark.textContent = clock(t);
    track.append(mark);
  }
  const buttons = words.map((w, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = `word lane${i % 2} ${confidenceClass(w.confidence)}`;
    button.style.left = `${w.start * PX_PER_SECOND}px`;
    button.style.minWidth = `${Math.max((w.end - w.start) * PX_PER_SECOND, 24)}px`;
    button.textContent = w.word;
    button.dataset.start = String(w.start);
    button.title = `${w.word}: ${w.start.toFixed(2)}–${w.end.toFixed(2)} s, confidence ${w.confidence.toFixed(2)}`;
    button.setAttribute(
      "aria-label",
      `${w.word}, at ${w.start.toFixed(1)} seconds, confidence ${Math.round(w.confidence * 100)}%`
    );
    button.addEventListener("click", () => onSeek(w.start));
    track.append(button);
    return button;
  });
  container.append(track);
  return buttons;
}

/** Mark the word being played. */
export function highlight(buttons, words, time) {
  words.forEach((w, i) => buttons[i].classList.toggle("playing", time >= w.start && time < w.end));
}

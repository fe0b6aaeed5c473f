// llmapi console: a little progressive enhancement, no library, no build step.
// Every form works without it; with it, dangerous forms ask first, secrets copy with
// one click, and the cluster view refreshes itself.
"use strict";

document.addEventListener("submit", (event) => {
  const question = event.target.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const field = document.getElementById(button.getAttribute("data-copy"));
  field.select();
  try {
    await navigator.clipboard.writeText(field.value);
  } catch (error) {
    document.execCommand("copy");
  }
  button.textContent = "Copied";
});

function refresh(box) {
  const every = Number(box.getAttribute("data-every")) || 2000;
  const load = async () => {
    try {
      const answer = await fetch(box.getAttribute("data-refresh"), { credentials: "same-origin" });
      if (answer.redirected || !answer.ok) {
        if (answer.status === 401 || answer.redirected) window.location.reload();
        return;
      }
      box.innerHTML = await answer.text();
    } catch (error) {
      // The console's own server is restarting: try again at the next tick.
    }
  };
  window.setInterval(load, every);
}

document.querySelectorAll("[data-refresh]").forEach(refresh);

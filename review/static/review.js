// Keyboard shortcuts for the review page (review.html). Loaded with `defer`, so the DOM is ready.
//   1 / 2 / 3  choose Response 1 / Response 2 / Tie and move to the rationale box
//   Enter      (in the rationale box) submit, if a choice was made; Shift+Enter adds a line
//   s          skip this pair now        u   undo my last label
// Letters and digits typed into the rationale box are text, never shortcuts.
(function () {
  "use strict";

  const form = document.getElementById("label-form");
  const undoForm = document.getElementById("undo-form");
  if (!undoForm) return; // not the review page

  const choice = form ? form.elements.namedItem("choice") : null;
  const rationale = form ? form.elements.namedItem("rationale") : null;
  const buttons = form ? Array.from(form.querySelectorAll("button[data-choice]")) : [];
  const keyChoices = new Map([["1", "left"], ["2", "right"], ["3", "tie"]]);

  function select(value) {
    choice.value = value;
    for (const b of buttons) b.classList.toggle("selected", b.dataset.choice === value);
  }

  // One submission per page: a repeated key press must not post the same label twice.
  let submitting = false;
  function submit(target) {
    if (submitting) return;
    submitting = true;
    target.requestSubmit();
  }
  window.addEventListener("pageshow", () => { submitting = false; }); // back/forward cache

  // A click sets the choice; the button's own type="submit" then posts the form.
  for (const b of buttons) b.addEventListener("click", () => select(b.dataset.choice));

  function onRationaleKey(event) {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      if (choice.value) submit(form);
    }
  }

  function onPageKey(event) {
    if (form && keyChoices.has(event.key)) {
      event.preventDefault();
      select(keyChoices.get(event.key));
      rationale.focus();
    } else if (form && event.key === "s") {
      event.preventDefault();
      select("skip");
      submit(form);
    } else if (event.key === "u") {
      event.preventDefault();
      submit(undoForm);
    }
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return; // browser shortcuts
    if (rationale && event.target === rationale) onRationaleKey(event);
    else if (!event.target.closest("input, textarea, select")) onPageKey(event);
  });
})();

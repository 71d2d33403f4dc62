// Keyboard shortcuts for the review page (review.html). Loaded with `defer`, so the DOM is ready.
//   1 / 2 / 3  choose Response 1 / Response 2 / Tie; then
//   a digit    (right after the choice) the principle that decided it: the guidelines' number
//   Enter      submit, if a choice was made (in the rationale box: Shift+Enter adds a line)
//   s          skip this pair now        u   undo my last label
// Any other key after the choice starts the rationale. Letters and digits typed into the rationale
// box are text, never shortcuts.
(function () {
  "use strict";

  const form = document.getElementById("label-form");
  const undoForm = document.getElementById("undo-form");
  if (!undoForm) return; // not the review page

  const choice = form ? form.elements.namedItem("choice") : null;
  const rationale = form ? form.elements.namedItem("rationale") : null;
  const principle = form ? form.elements.namedItem("principle") : null;
  let askingPrinciple = false; // just after a choice key: a digit names the principle that decided
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

  function onPrincipleKey(event) {
    askingPrinciple = false;
    event.preventDefault();
    const n = Number(event.key);
    if (/^[1-9]$/.test(event.key) && n < principle.options.length) {
      principle.selectedIndex = n;
      rationale.focus();
    } else if (event.key === "Enter") {
      submit(form);
    } else {
      rationale.focus();
      if (event.key.length === 1) rationale.value += event.key; // the first letter of the rationale
    }
  }

  function onPageKey(event) {
    if (form && askingPrinciple && principle) {
      onPrincipleKey(event);
    } else if (form && keyChoices.has(event.key)) {
      event.preventDefault();
      select(keyChoices.get(event.key));
      askingPrinciple = principle !== null;
      if (!askingPrinciple) rationale.focus();
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

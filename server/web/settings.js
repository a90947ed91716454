// The Auto-reply panel: which responder plugin answers for me while I am BUSY, and my own
// settings for it (a persona, a language, an away message: whatever the plugin lets users set).
//
//   - GET /api/plugins lists the plugins; those with the "responder" role can be chosen (the
//     moderators the operator runs are not a user's business and are not shown); one still
//     loading is shown, but cannot be chosen until it is ready;
//   - GET /api/users/me/responder is my choice (until I make one: the server's default, no
//     settings);
//   - the form is built from the chosen plugin's `user_settings`; Save sends
//     PUT /api/users/me/responder with the settings filled in (an empty field is left out: the
//     plugin's default applies).
//
// Owns the dialog. Imports api and dom; no chat state.

import { api, describeError } from "./api.js";
import { $, el } from "./dom.js";

const MAX_VALUE = 4000; // the server's limit per setting

const dialog = $("autoreply");
const form = $("autoreply-form");
const choicesNode = $("autoreply-choices");
const settingsNode = $("autoreply-settings");
const errorNode = $("autoreply-error");
const statusNode = $("autoreply-status");

let plugins = []; // the responders, as GET /api/plugins describes them
let saved = null; // {plugin, config}: my choice as the server has it
// What I typed per plugin and did not save yet: switching to another responder and back keeps it.
const typed = new Map();
let opening = 0;

export async function openPanel() {
  const run = ++opening;
  errorNode.textContent = "";
  statusNode.textContent = "Loading…";
  choicesNode.replaceChildren();
  settingsNode.replaceChildren();
  typed.clear();
  if (!dialog.open) dialog.showModal();
  try {
    const [list, mine] = await Promise.all([api("GET", "/api/plugins"), api("GET", "/api/users/me/responder")]);
    if (run !== opening) return;
    plugins = list.filter((p) => p.roles.includes("responder") || p.state === "loading");
    saved = mine;
    statusNode.textContent = "";
    renderChoices(mine.plugin);
  } catch (err) {
    if (run !== opening) return;
    statusNode.textContent = "";
    errorNode.textContent = `Could not load the responders: ${describeError(err)}`;
  }
}

export function closePanel() {
  opening += 1;
  if (dialog.open) dialog.close();
}

function chosenName() {
  return form.querySelector('input[name="responder"]:checked')?.value ?? null;
}

function renderChoices(current) {
  const known = plugins.some((p) => p.name === current);
  choicesNode.replaceChildren(
    ...plugins.map((plugin) => {
      const loading = plugin.state === "loading";
      const input = el("input", {
        type: "radio",
        name: "responder",
        value: plugin.name,
        id: `responder-${plugin.name}`,
        checked: plugin.name === current && !loading,
        disabled: loading,
      });
      input.addEventListener("change", () => {
        statusNode.textContent = "";
        errorNode.textContent = "";
        renderSettings();
      });
      const note =
        plugin.state === "loading"
          ? "Loading…"
          : plugin.state === "benched"
            ? "Resting after failures: the standard message answers meanwhile"
            : null;
      return el(
        "label",
        { class: "choice", for: input.id, "data-testid": "responder-option", "data-name": plugin.name },
        input,
        el(
          "span",
          { class: "choice-text" },
          el("span", { class: "choice-name" }, plugin.name),
          el("span", { class: "choice-description" }, plugin.description),
          note ? el("span", { class: "choice-note" }, note) : null,
        ),
      );
    }),
  );
  if (!plugins.length) {
    choicesNode.append(el("p", { class: "muted" }, "This server has no responder to choose from."));
  } else if (current && !known) {
    choicesNode.append(
      el("p", { class: "choice-note" }, `Your responder "${current}" is no longer installed; choose another.`),
    );
  }
  renderSettings();
}

/** The form for the chosen plugin's settings, filled with what I saved (or typed) for it. */
function renderSettings() {
  const name = chosenName();
  const plugin = plugins.find((p) => p.name === name);
  if (!plugin) {
    settingsNode.replaceChildren();
    return;
  }
  const values = typed.get(name) ?? (saved?.plugin === name ? saved.config : {});
  const fields = plugin.user_settings.map(({ key, description }) => {
    const id = `setting-${key}`;
    const input = el("textarea", {
      id,
      name: key,
      rows: key === "persona" || key === "message" ? 3 : 1,
      maxlength: MAX_VALUE,
      "data-testid": id,
      "aria-describedby": `${id}-hint`,
    });
    input.value = values[key] ?? "";
    input.addEventListener("input", () => {
      typed.set(name, currentValues());
      statusNode.textContent = "";
    });
    return el(
      "div",
      { class: "field" },
      el("label", { for: id }, key.charAt(0).toUpperCase() + key.slice(1).replace(/[_-]+/g, " ")),
      input,
      el("p", { class: "hint", id: `${id}-hint` }, description),
    );
  });
  settingsNode.replaceChildren(
    ...(fields.length ? fields : [el("p", { class: "muted" }, `${plugin.name} has no settings of yours.`)]),
  );
}

function currentValues() {
  const values = {};
  for (const input of settingsNode.querySelectorAll("textarea")) values[input.name] = input.value;
  return values;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorNode.textContent = "";
  statusNode.textContent = "";
  const plugin = chosenName();
  if (!plugin) {
    errorNode.textContent = "Choose a responder.";
    return;
  }
  const config = {};
  for (const [key, value] of Object.entries(currentValues())) {
    if (value.trim()) config[key] = value;
  }
  const button = event.submitter ?? form.querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    saved = await api("PUT", "/api/users/me/responder", { body: { plugin, config } });
    typed.delete(plugin);
    statusNode.textContent = `Saved: ${saved.plugin} answers for you while you are Busy.`;
  } catch (err) {
    errorNode.textContent = describeError(err);
  } finally {
    button.disabled = false;
  }
});

$("autoreply-close").addEventListener("click", closePanel);

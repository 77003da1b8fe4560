// keyward dashboard: the little that needs a script. Pages work without it;
// this adds copying, confirmations and WebAuthn (passkeys), which only a
// script can reach. No inline handlers: everything is wired by data attributes,
// so the CSP can forbid inline script.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.querySelector(button.dataset.copy);
      const status = button.parentElement.querySelector(".copied");
      try {
        await navigator.clipboard.writeText(field.value);
        if (status) status.textContent = "Copied";
      } catch {
        field.select();
        if (status) status.textContent = "Select and copy it (Ctrl+C)";
      }
    });
  }
  for (const button of document.querySelectorAll("[data-confirm]")) {
    button.addEventListener("click", (event) => {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  }
  wire("[data-passkey-sign-in]", passkeySignIn);
  wire("[data-passkey-reauthenticate]", passkeyReauthenticate);
  wire("[data-passkey-register]", passkeyRegister);
  linkToken();
});

// The pages emailed links open carry their secret in the URL's fragment,
// which no server ever receives: copy it into the form (which POSTs it), hide
// the field, and drop the fragment from the address bar and the history.
function linkToken() {
  const box = document.querySelector("[data-link-token]");
  if (!box) return;
  const field = box.querySelector("input");
  const token = new URLSearchParams(window.location.hash.slice(1)).get("token");
  if (token) {
    field.value = token;
    history.replaceState(null, "", window.location.pathname);
  }
  if (field.value) box.hidden = true;
}

function wire(selector, action) {
  for (const button of document.querySelectorAll(selector)) {
    button.addEventListener("click", () => action(button).catch(showError));
  }
}

function showError(error) {
  const box = document.getElementById("passkey-error");
  if (!box) return;
  box.textContent = error && error.message ? error.message : String(error);
  box.hidden = false;
}

async function api(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body || {}),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error((answer.error && answer.error.message) || "refused (" + response.status + ")");
  }
  return answer;
}

async function passkeyAnswer(challengePath) {
  const challenge = await api(challengePath);
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(challenge.options);
  const credential = await navigator.credentials.get({ publicKey });
  return { ceremony: challenge.ceremony, credential: credential.toJSON() };
}

async function passkeySignIn() {
  const passkey = await passkeyAnswer("/auth/login/passkey");
  await api("/auth/login/second-factor", { passkey });
  window.location.assign("/");
}

async function passkeyReauthenticate(button) {
  const passkey = await passkeyAnswer("/auth/reauthenticate/passkey");
  await api("/auth/reauthenticate", { passkey });
  window.location.assign(button.dataset.back || "/");
}

async function passkeyRegister(button) {
  const nameField = document.querySelector(button.dataset.name);
  const name = nameField ? nameField.value : "";
  const started = await api("/auth/passkeys/registration");
  const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(started.options);
  const credential = await navigator.credentials.create({ publicKey });
  await api("/auth/passkeys", { ceremony: started.ceremony, name, credential: credential.toJSON() });
  window.location.assign("/security");
}

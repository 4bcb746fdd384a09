// The login page: POST /auth/login, then back to the page that asked (?next=), or the map viewer.
import { post } from "./api.js";
import { showMessage } from "./ui.js";

const params = new URLSearchParams(location.search);
const form = document.getElementById("login-form");

function nextPage() {
  const next = params.get("next") || "/";
  return next.startsWith("/") && !next.startsWith("//") ? next : "/"; // never leave this site
}

if (params.get("why")) showMessage(params.get("why"), "warning");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const data = new FormData(form);
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    await post("/auth/login", { username: data.get("username"), password: data.get("password") });
    location.href = nextPage();
  } catch (error) {
    showMessage(error.status === 401 ? "Wrong username or password (or the account is disabled)." : error.message);
    button.disabled = false;
  }
});

// The admin's users page: list, add, change role, disable or enable, set a new password.
import { get, patch, post } from "./api.js";
import { $, el, showMessage, startPage } from "./ui.js";

const ROLES = ["viewer", "operator", "admin"];
let me;

async function main() {
  me = await startPage("users");
  if (me.role !== "admin") {
    $("main").replaceChildren(el("p", {}, `Only admins manage users; you are ${me.username}, a ${me.role}.`));
    return;
  }
  $("#add-user").addEventListener("submit", addUser);
  await render();
}

async function render() {
  let users;
  try {
    users = (await get("/users")).users;
  } catch (error) {
    showMessage(`Cannot list the users: ${error.message}`);
    return;
  }
  $("#users").replaceChildren(
    el("thead", {}, el("tr", {}, ...["User", "Role", "State", "Added", "", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...users.map(userRow)),
  );
}

function userRow(user) {
  const self = user.username === me.username;
  const role = el(
    "select",
    { "aria-label": `Role of ${user.username}`, disabled: self, onchange: (e) => change(user.username, { role: e.target.value }, `${user.username} is now a ${e.target.value}`) },
    ...ROLES.map((r) => el("option", { selected: r === user.role }, r)),
  );
  return el(
    "tr",
    { dataset: { username: user.username, role: user.role, disabled: user.disabled } },
    el("td", {}, user.username, self ? " (you)" : ""),
    el("td", {}, role),
    el("td", {}, user.disabled ? "disabled" : "active"),
    el("td", {}, user.created_at.slice(0, 10)),
    el(
      "td",
      {},
      self
        ? ""
        : el(
            "button",
            { onclick: () => change(user.username, { disabled: !user.disabled }, `${user.username} is ${user.disabled ? "enabled" : "disabled"}`) },
            user.disabled ? "Enable" : "Disable",
          ),
    ),
    el(
      "td",
      {},
      el(
        "button",
        {
          onclick: () => {
            const password = prompt(`New password for ${user.username} (at least 10 characters):`);
            if (password) change(user.username, { password }, `${user.username} has a new password; their sessions ended`);
          },
        },
        "Set password",
      ),
    ),
  );
}

async function change(username, body, done) {
  try {
    await patch(`/users/${encodeURIComponent(username)}`, body);
    showMessage(done, "info");
  } catch (error) {
    showMessage(`Not changed: ${error.message}`);
  }
  await render();
}

async function addUser(event) {
  event.preventDefault();
  const form = event.target;
  const data = Object.fromEntries(new FormData(form));
  try {
    await post("/users", data);
    showMessage(`Added ${data.username} (${data.role}).`, "info");
    form.reset();
  } catch (error) {
    showMessage(`Not added: ${error.message}`);
  }
  await render();
}

main();

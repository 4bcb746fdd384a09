// Small DOM helpers, the page header (user, role, navigation) and the messages the pages show.
import { get, onSessionLost, post } from "./api.js";

/** Make an element: el("div", {class: "x", onclick: f}, "text", child, ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** Show a message in the page's banner: kind is "error", "warning" or "info". */
export function showMessage(text, kind = "error", { action } = {}) {
  const banner = $("#banner");
  banner.replaceChildren(el("span", {}, text));
  if (action) banner.append(" ", action);
  banner.className = `banner ${kind}`;
  banner.hidden = false;
  banner.append(el("button", { class: "close", title: "Dismiss", onclick: () => (banner.hidden = true) }, "×"));
}

export function clearMessage() {
  $("#banner").hidden = true;
}

function loginLink(text = "Log in again") {
  const next = encodeURIComponent(location.pathname + location.search + location.hash);
  return el("a", { href: `/login.html?next=${next}` }, text);
}

/** Say that the session has ended (expired, logged out elsewhere), with a link back to the login page. */
export function sessionEnded(why) {
  showMessage(`Your session has ended: ${why}.`, "error", { action: loginLink() });
}

/**
 * The logged-in user ({username, role, ...}); sends the browser to the login page when there is none.
 * Fills the page header and makes every later 401 show "session ended" (without leaving the page,
 * so nothing on it is lost).
 */
export async function startPage(active) {
  let me;
  try {
    me = await get("/auth/me");
  } catch (error) {
    if (error.status === 401) {
      const next = encodeURIComponent(location.pathname + location.search + location.hash);
      location.replace(`/login.html?next=${next}&why=${encodeURIComponent(error.message)}`);
      return new Promise(() => {}); // the page is going away
    }
    showMessage(`Cannot start: ${error.message}`);
    throw error;
  }
  onSessionLost((error) => sessionEnded(error.message));
  const nav = $("#nav");
  const links = [
    ["viewer", "/", "Map viewer"],
    ["validate", "/validate.html", "Validation Tool"],
    ["samples", "/samples.html", "Sample queues"],
  ];
  if (me.role === "admin") links.push(["users", "/users.html", "Users"]);
  nav.replaceChildren(
    el("strong", { class: "brand" }, "LCMS"),
    ...links.map(([key, href, text]) => el("a", { href, class: key === active ? "active" : "" }, text)),
    el("span", { class: "spacer" }),
    el("span", { class: "who", id: "who" }, `${me.username} · ${me.role}`),
    el(
      "button",
      {
        class: "link",
        onclick: async () => {
          try {
            await post("/auth/logout");
          } finally {
            location.href = "/login.html";
          }
        },
      },
      "Log out",
    ),
  );
  document.body.dataset.role = me.role;
  return me;
}

/** A colour swatch and a class name. */
export function classLabel(legend, code) {
  const entry = legend.find((c) => c.code === code);
  if (code === null || code === undefined) return el("span", { class: "muted" }, "no data");
  return el(
    "span",
    { class: "class-label" },
    el("span", { class: "swatch", style: `background:${entry ? entry.color : "#999"}` }),
    entry ? entry.name : `class ${code}`,
  );
}

export function formatDate(iso) {
  return iso ? iso.slice(0, 10) : "";
}

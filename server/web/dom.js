// Small DOM helpers: find by id, build elements, keep a list's children in step with data.
//
// Owns nothing. Imports nothing.
//
// The page is served with a strict Content-Security-Policy (no inline script or style), so
// everything builds DOM nodes and toggles classes and attributes; nothing sets inline styles or
// HTML strings.

export const $ = (id) => document.getElementById(id);

/** Creates an element: el("p", {class: "x", "data-id": 1}, child, "text", ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child);
  }
  return node;
}

export function icon(name, cls = "") {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("aria-hidden", "true");
  if (cls) svg.setAttribute("class", cls);
  const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}

/**
 * Makes `container`'s children match `items` (in order), reusing the element of each key: the
 * list keeps focus, scroll position and animations instead of being rebuilt.
 */
export function reconcile(container, items, cache, create, update) {
  const wanted = new Set();
  let cursor = container.firstElementChild;
  for (const item of items) {
    wanted.add(item.key);
    let node = cache.get(item.key);
    if (!node) {
      node = create(item);
      node.dataset.key = item.key;
      cache.set(item.key, node);
    }
    update?.(node, item);
    if (node === cursor) {
      cursor = cursor.nextElementSibling;
    } else {
      container.insertBefore(node, cursor);
    }
  }
  for (const [key, node] of cache) {
    if (!wanted.has(key)) {
      node.remove();
      cache.delete(key);
    }
  }
}

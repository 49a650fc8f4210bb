/* Render the dashboard's app.js once in Node, without a browser, against a live admin.
 *
 *   node render_dashboard.js APP_JS ADMIN_URL
 *
 * A minimal DOM (elements, text nodes, attributes, the few queries app.js makes) stands in
 * for the page; fetch() gets the admin's answers. After the first complete render it prints
 * JSON: per route card, its header stats and every backend-table row's cells as text, the
 * KPI tiles, and per service card its endpoint-table rows. For tests where Chromium is not
 * installed (test_dashboard.py needs it).
 */
'use strict';

const fs = require('fs');
const vm = require('vm');

const [appPath, adminUrl] = process.argv.slice(2);

class DomNode {}

class Text extends DomNode {
  constructor(data) { super(); this.nodeType = 3; this.nodeName = '#text'; this.data = String(data); this.parentNode = null; }
  get textContent() { return this.data; }
  set textContent(value) { this.data = String(value); }
  get nextSibling() { return sibling(this, 1); }
}

function sibling(node, step) {
  if (!node.parentNode) return null;
  const siblings = node.parentNode.childNodes;
  return siblings[siblings.indexOf(node) + step] || null;
}

class Element extends DomNode {
  constructor(tag, namespaceURI) {
    super();
    this.nodeType = 1;
    this.nodeName = this.tagName = namespaceURI ? tag : tag.toUpperCase();
    this.namespaceURI = namespaceURI || null;
    this.attributes = [];
    this.childNodes = [];
    this.parentNode = null;
    this.clientWidth = 800;
    const props = new Map();
    this.style = {
      setProperty: (name, value) => props.set(name, value),
      get cssText() { return [...props].map(([k, v]) => `${k}: ${v};`).join(' '); },
      set cssText(text) {
        props.clear();
        for (const part of String(text).split(';')) {
          const at = part.indexOf(':');
          if (at > 0) props.set(part.slice(0, at).trim(), part.slice(at + 1).trim());
        }
      },
    };
  }
  getAttribute(name) { const a = this.attributes.find(x => x.name === name); return a ? a.value : null; }
  hasAttribute(name) { return this.attributes.some(x => x.name === name); }
  setAttribute(name, value) {
    const a = this.attributes.find(x => x.name === name);
    if (a) a.value = String(value); else this.attributes.push({name, value: String(value)});
  }
  removeAttribute(name) { this.attributes = this.attributes.filter(x => x.name !== name); }
  get className() { return this.getAttribute('class') || ''; }
  set className(value) { this.setAttribute('class', value); }
  get children() { return this.childNodes.filter(n => n.nodeType === 1); }
  get firstChild() { return this.childNodes[0] || null; }
  get nextSibling() { return sibling(this, 1); }
  get textContent() { return this.childNodes.map(n => n.textContent).join(''); }
  set textContent(value) { this.childNodes = []; this.appendChild(new Text(value)); }
  appendChild(node) { return this.insertBefore(node, null); }
  insertBefore(node, before) {
    if (node.parentNode) node.parentNode.removeChild(node);
    const at = before ? this.childNodes.indexOf(before) : -1;
    if (at < 0) this.childNodes.push(node); else this.childNodes.splice(at, 0, node);
    node.parentNode = this;
    return node;
  }
  removeChild(node) {
    this.childNodes.splice(this.childNodes.indexOf(node), 1);
    node.parentNode = null;
    return node;
  }
  addEventListener() {}
  *walk() {
    for (const child of this.children) { yield child; yield* child.walk(); }
  }
  /** Only simple selectors: '.class', '#id', '[attribute]' (what app.js uses) and 'tag'. */
  querySelectorAll(selector) {
    const test = selector.startsWith('.') ? el => el.className.split(/\s+/).includes(selector.slice(1))
      : selector.startsWith('#') ? el => el.getAttribute('id') === selector.slice(1)
      : selector.startsWith('[') ? el => el.hasAttribute(selector.slice(1, -1))
      : el => el.nodeName === selector.toUpperCase();
    return [...this.walk()].filter(test);
  }
  querySelector(selector) { return this.querySelectorAll(selector)[0] || null; }
}

const root = new Element('html');
for (const id of ['conn', 'conn-text', 'updated', 'app']) {
  const el = new Element(id === 'conn-text' ? 'span' : 'div');
  el.setAttribute('id', id);
  root.appendChild(el);
}
const document = {
  readyState: 'complete', title: '',
  createElement: tag => new Element(tag),
  createElementNS: (ns, tag) => new Element(tag, ns),
  createTextNode: data => new Text(data),
  getElementById: id => root.querySelector('#' + id),
  querySelector: selector => root.querySelector(selector),
  querySelectorAll: selector => root.querySelectorAll(selector),
  addEventListener() {},
};

const text = node => node.textContent.replace(/\s+/g, ' ').trim();

function report() {
  const app = document.getElementById('app');
  const cards = app.querySelectorAll('[data-route]').map(card => ({
    route: card.getAttribute('data-route'),
    stats: text(card.querySelector('.card-stats')),
    observed: card.querySelectorAll('[data-split]').filter(b => b.getAttribute('data-split') === 'observed')
      .map(b => b.getAttribute('aria-label'))[0] || null,
    rows: card.querySelectorAll('tr').filter(tr => tr.parentNode.nodeName === 'TBODY').map(tr => ({
      backend: tr.getAttribute('data-backend'), injected: tr.hasAttribute('data-injected'),
      cells: tr.children.map(text),
    })),
  }));
  const kpis = Object.fromEntries(app.querySelectorAll('[data-kpi]').map(
    tile => [tile.getAttribute('data-kpi'), text(tile.querySelector('dd') || tile)]));
  const services = app.querySelectorAll('[data-service]').map(card => ({
    service: card.getAttribute('data-service'),
    rows: card.querySelectorAll('tr').filter(tr => tr.parentNode.nodeName === 'TBODY').map(tr => ({
      key: tr.getAttribute('data-key'), cells: tr.children.map(text),
    })),
  }));
  process.stdout.write(JSON.stringify({cards, kpis, services}));
  process.exit(0);
}

const context = {
  document, Node: DomNode, console, Date, Math, JSON, Promise, Map, Set, Array, Object, Number, String, Error,
  AbortController, Intl, isFinite,
  window: {},
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: id => clearTimeout(id),
  setInterval: () => 0,
  fetch: (path, options) => fetch(new URL(path, adminUrl + '/'), {headers: options.headers}),
};
context.window = context;
vm.createContext(context);
vm.runInContext(fs.readFileSync(appPath, 'utf8'), context, {filename: appPath});

// The first poll renders once every answer is in; then report what the page shows.
const started = Date.now();
(function wait() {
  if (document.getElementById('app').querySelector('[data-kpi]')) return report();
  if (Date.now() - started > 10000) { process.stderr.write('no render within 10 s\n'); process.exit(1); }
  setTimeout(wait, 20);
})();

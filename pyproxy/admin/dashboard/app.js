/* pyproxy dashboard: polls the admin API every second and renders it.
 *
 * No dependencies and no build step. Every string from the API (route names, hosts, labels,
 * error messages) reaches the page as a text node or an attribute value set through the
 * DOM — never through innerHTML — so nothing in the config can become markup or script.
 *
 * Rendering builds a fresh tree and morphs the live one into it (keyed by data-key), so
 * nodes persist between polls: no flicker, text stays selectable, <details> stay open.
 * History for the sparklines lives only in this page (the last five minutes of polls).
 */
'use strict';

(function () {
  const POLL_MS = 1000;
  const RETRY_MS = 2000;
  const TIMEOUT_MS = 3000;
  const HISTORY_MS = 5 * 60 * 1000;
  const CANARY_RECHECK_POLLS = 15;   // after a 404, ask again every so many polls
  const EVENTS_SHOWN = 6;
  const PALETTE = 6;                 // backend colours c0..c5 in style.css
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const ACTIVE_PHASES = new Set(['initializing', 'progressing', 'waiting_promotion']);

  const state = {
    routes: null, services: null, faults: null, config: null, canaries: null,
    canariesAvailable: null,   // null: not asked yet; false: 404 (older proxy)
    canaryCountdown: 0,
    connected: null,           // null: connecting; true: live; false: disconnected
    lastOk: 0,                 // Date.now() of the last complete poll
    offsetMs: 0,               // server clock minus this browser's clock
    receivedAt: 0,
    history: new Map(),        // route \0 backend -> [{t, sr, rps}]
    open: new Set(),           // keys of <details> the user opened
  };

  // ------------------------------------------------------------------ DOM helpers

  /** An element; attrs: class, text, style (object), data-*, aria-*, any attribute.
   *  Children: nodes, strings (as text), arrays; null/false/undefined are skipped. */
  function h(tag, attrs, ...children) {
    return build(document.createElement(tag), attrs, children);
  }

  function svg(tag, attrs, ...children) {
    return build(document.createElementNS(SVG_NS, tag), attrs, children);
  }

  function build(el, attrs, children) {
    if (attrs) {
      for (const [name, value] of Object.entries(attrs)) {
        if (value === null || value === undefined || value === false) continue;
        if (name === 'text') el.textContent = String(value);
        else if (name === 'style') {
          // CSSOM, not the style attribute: allowed under the strict CSP.
          for (const [prop, v] of Object.entries(value)) el.style.setProperty(prop, String(v));
        } else el.setAttribute(name, value === true ? '' : String(value));
      }
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) append(el, child);
      else if (child instanceof Node) el.appendChild(child);
      else el.appendChild(document.createTextNode(String(child)));
    }
  }

  const ICONS = {
    check: 'M5 12.5l4.5 4.5L19 7.5',
    x: 'M6.5 6.5l11 11M17.5 6.5l-11 11',
    warn: 'M12 3.8l9 15.7H3z M12 10v4.2 M12 17v.2',
    bolt: 'M13.5 2.5L5 13.5h6.5l-1 8 8.5-11H12.5z',
    swap: 'M4 8h14m-3.5-3.5L18 8l-3.5 3.5 M20 16H6m3.5-3.5L6 16l3.5 3.5',
    clock: 'M12 3.5a8.5 8.5 0 1 0 0 17a8.5 8.5 0 1 0 0-17z M12 7.5V12l3 2',
    plug: 'M3 3l18 18 M9 3v4 M15 3v4 M7 7h10v3.5a5 5 0 0 1-10 0z M12 15.5V21',
    pause: 'M9 5.5v13 M15 5.5v13',
    flask: 'M9.5 3h5 M10.5 3v6L5 19.2A1.3 1.3 0 0 0 6.1 21h11.8a1.3 1.3 0 0 0 1.1-1.8L13.5 9V3 M7.5 15h9',
    minus: 'M6 12h12',
    eject: 'M12 5l7 8H5z M5 18h14',
    reload: 'M19.5 12a7.5 7.5 0 1 1-2.2-5.3 M19.5 4v4.5H15',
    heart: 'M12 20s-7.5-4.6-7.5-10.2A4.3 4.3 0 0 1 12 7.3a4.3 4.3 0 0 1 7.5 2.5C19.5 15.4 12 20 12 20z',
    target: 'M12 3.5a8.5 8.5 0 1 0 0 17a8.5 8.5 0 1 0 0-17z M12 8a4 4 0 1 0 0 8a4 4 0 1 0 0-8z',
  };

  function icon(name, cls) {
    return svg('svg', {class: 'icon ' + (cls || ''), viewBox: '0 0 24 24', 'aria-hidden': 'true',
                       focusable: 'false'},
               svg('path', {d: ICONS[name]}));
  }

  /** Text for screen readers only (the visible form is an icon or a colour). */
  function sr(text) {
    return h('span', {class: 'sr-only', text});
  }

  // ------------------------------------------------------------------ morph

  function keyOf(node) {
    return node.nodeType === 1 ? node.getAttribute('data-key') : null;
  }

  function sameKind(a, b) {
    return a.nodeType === b.nodeType && a.nodeName === b.nodeName && keyOf(a) === keyOf(b);
  }

  /** Make `from` look like `to` (same kind), reusing `from`'s nodes where possible. */
  function morph(from, to) {
    if (from.nodeType === 3 || from.nodeType === 8) {
      if (from.data !== to.data) from.data = to.data;
      return;
    }
    for (const attr of Array.from(from.attributes)) {
      if (attr.name !== 'style' && !to.hasAttribute(attr.name)) from.removeAttribute(attr.name);
    }
    for (const attr of Array.from(to.attributes)) {
      if (attr.name === 'style') continue;
      if (from.getAttribute(attr.name) !== attr.value) from.setAttribute(attr.name, attr.value);
    }
    if (from.style && to.style && from.style.cssText !== to.style.cssText) {
      from.style.cssText = to.style.cssText;
    }
    morphChildren(from, to);
  }

  function morphChildren(from, to) {
    const keyed = new Map();
    const unkeyed = [];
    for (const node of Array.from(from.childNodes)) {
      const key = keyOf(node);
      if (key !== null) keyed.set(key, node); else unkeyed.push(node);
    }
    let cursor = from.firstChild;
    let next = 0;
    for (const target of Array.from(to.childNodes)) {
      const key = keyOf(target);
      let match = null;
      if (key !== null) {
        match = keyed.get(key) || null;
        keyed.delete(key);
      } else if (next < unkeyed.length) {
        match = unkeyed[next++];
      }
      let node = target;
      if (match && sameKind(match, target)) {
        morph(match, target);
        node = match;
      }
      if (node === cursor) cursor = cursor.nextSibling;
      else from.insertBefore(node, cursor);
    }
    while (cursor) {
      const after = cursor.nextSibling;
      from.removeChild(cursor);
      cursor = after;
    }
  }

  // ------------------------------------------------------------------ formatting

  function isNum(v) { return typeof v === 'number' && isFinite(v); }

  function pct(value, digits) {
    if (!isNum(value)) return '—';
    if (digits === undefined) {
      const rounded = Math.round(value * 10) / 10;
      return (Number.isInteger(rounded) ? rounded.toFixed(0) : rounded.toFixed(1)) + '%';
    }
    return value.toFixed(digits) + '%';
  }

  function share(fraction) { return isNum(fraction) ? pct(fraction * 100) : '—'; }

  function successText(rate) {
    if (!isNum(rate)) return '—';
    if (rate >= 100) return '100%';
    if (rate >= 99) return rate.toFixed(2).replace(/0$/, '') + '%';
    return rate.toFixed(1) + '%';
  }

  function rps(value) {
    if (!isNum(value)) return '—';
    if (value === 0) return '0';
    if (value < 10) return value.toFixed(2);
    if (value < 100) return value.toFixed(1);
    return Math.round(value).toLocaleString('en');
  }

  function latency(seconds) {
    if (!isNum(seconds)) return '—';
    if (seconds < 0.001) return Math.round(seconds * 1e6) + ' µs';
    if (seconds < 0.01) return (seconds * 1000).toFixed(2) + ' ms';
    if (seconds < 1) return (seconds * 1000).toFixed(seconds < 0.1 ? 1 : 0) + ' ms';
    return seconds.toFixed(2) + ' s';
  }

  function seconds(value) {
    if (!isNum(value)) return '—';
    if (value < 1) return Math.round(value * 1000) + ' ms';
    return (Number.isInteger(value) ? value : value.toFixed(1)) + ' s';
  }

  /** 47 → "0:47", 754 → "12:34", 3723 → "1:02:03". */
  function clock(totalSeconds) {
    const s = Math.max(0, Math.ceil(totalSeconds));
    const hours = Math.floor(s / 3600);
    const minutes = Math.floor((s % 3600) / 60);
    const secs = String(s % 60).padStart(2, '0');
    return hours ? `${hours}:${String(minutes).padStart(2, '0')}:${secs}` : `${minutes}:${secs}`;
  }

  function ago(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 2) return 'just now';
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }

  /** 23 → "23 s", 150 → "2 min 30 s": how long until something happens. */
  function secondsLeft(totalSeconds) {
    const s = Math.max(0, Math.ceil(totalSeconds));
    if (s < 120) return s + ' s';
    const rest = s % 60;
    return Math.floor(s / 60) + ' min' + (rest ? ` ${rest} s` : '');
  }

  /** "01:02:03 UTC" for a server wall-clock time (seconds since the epoch). */
  function utcTimeOfDay(serverSeconds) {
    return new Date(Math.ceil(serverSeconds) * 1000).toISOString().slice(11, 19) + ' UTC';
  }

  function timeOfDay(ms) {
    return new Date(ms).toLocaleTimeString('en-GB', {hour12: false});
  }

  /** A server wall-clock time (seconds since the epoch) on this browser's clock, in ms. */
  function localMs(serverSeconds) {
    return serverSeconds * 1000 - state.offsetMs;
  }

  function successLevel(rate) {
    if (!isNum(rate)) return {cls: 'sr-none', icon: 'minus', word: 'no traffic'};
    if (rate >= 99) return {cls: 'sr-good', icon: 'check', word: 'healthy'};
    if (rate >= 95) return {cls: 'sr-warn', icon: 'warn', word: 'degraded'};
    return {cls: 'sr-bad', icon: 'x', word: 'failing'};
  }

  /** "stockmanager/v1" → "v1" when every backend of the route is on one service. */
  function shortNames(backends) {
    const services = new Set(backends.map(b => String(b.backend).split('/')[0]));
    const strip = services.size === 1 && backends.every(b => String(b.backend).includes('/'));
    return backends.map(b => strip ? String(b.backend).split('/').slice(1).join('/')
                                   : String(b.backend));
  }

  // ------------------------------------------------------------------ live elements

  /** A countdown that the ticker keeps current between polls: "0:47", or with
   *  format 'seconds' "47 s". */
  function countdown(deadlineMs, totalMs, cls, format) {
    const render = format === 'seconds' ? secondsLeft : clock;
    return h('time', {class: 'countdown ' + (cls || ''), 'data-deadline': Math.round(deadlineMs),
                      'data-total': totalMs ? Math.round(totalMs) : null,
                      'data-format': format || null,
                      datetime: new Date(deadlineMs).toISOString(),
                      text: render((deadlineMs - Date.now()) / 1000)});
  }

  function since(ms) {
    return h('time', {class: 'since', 'data-since': Math.round(ms),
                      datetime: new Date(ms).toISOString(),
                      title: new Date(ms).toLocaleString(), text: ago(Date.now() - ms)});
  }

  function tick() {
    const now = Date.now();
    for (const el of document.querySelectorAll('[data-deadline]')) {
      const left = (Number(el.getAttribute('data-deadline')) - now) / 1000;
      const seconds = el.getAttribute('data-format') === 'seconds';
      const text = seconds ? secondsLeft(left) : (left > 0 ? clock(left) : '0:00');
      if (el.textContent !== text) el.textContent = text;
    }
    for (const el of document.querySelectorAll('[data-progress-deadline]')) {
      const deadline = Number(el.getAttribute('data-progress-deadline'));
      const total = Number(el.getAttribute('data-progress-total')) || 1;
      const fraction = Math.min(1, Math.max(0, (deadline - now) / total));
      el.style.setProperty('width', (fraction * 100).toFixed(2) + '%');
    }
    for (const el of document.querySelectorAll('[data-since]')) {
      const text = ago(now - Number(el.getAttribute('data-since')));
      if (el.textContent !== text) el.textContent = text;
    }
    renderHeader();
  }

  // ------------------------------------------------------------------ history and charts

  function historyKey(route, backend) { return route + '\u0000' + backend; }

  function record(now) {
    const seen = new Set();
    for (const route of (state.routes && state.routes.routes) || []) {
      for (const b of route.backends || []) {
        const key = historyKey(route.name, b.backend);
        seen.add(key);
        let series = state.history.get(key);
        if (!series) state.history.set(key, series = []);
        series.push({t: now, sr: isNum(b.success_rate) ? b.success_rate : null,
                     rps: isNum(b.rps) ? b.rps : null});
      }
    }
    for (const [key, series] of state.history) {
      while (series.length && series[0].t < now - HISTORY_MS) series.shift();
      if (!seen.has(key) && !series.length) state.history.delete(key);
    }
  }

  /** A gap in every series while the proxy does not answer. */
  function recordGap(now) {
    for (const series of state.history.values()) {
      if (series.length && series[series.length - 1].sr !== null) {
        series.push({t: now, sr: null, rps: null});
      }
    }
  }

  /** A sparkline: polylines broken at gaps (null values), on a time axis that grows from
   *  10 s to 5 min as history accumulates. */
  function sparkline(series, field, opts) {
    const W = 112, H = 28, PAD = 2.5;
    const now = Date.now();
    const points = series.filter(p => p.t >= now - HISTORY_MS);
    const values = points.map(p => p[field]).filter(isNum);
    const first = points.length ? points[0].t : now;
    const span = Math.min(HISTORY_MS, Math.max(10000, now - first));
    let lo, hi;
    if (field === 'sr') {
      lo = Math.min(95, values.length ? Math.floor(Math.min(...values) / 5) * 5 : 95);
      hi = 100;
    } else {
      lo = 0;
      hi = Math.max(1, values.length ? Math.max(...values) * 1.15 : 1);
    }
    const x = t => (W - (now - t) / span * W).toFixed(1);
    const y = v => (H - PAD - (v - lo) / (hi - lo || 1) * (H - 2 * PAD)).toFixed(1);
    const runs = [];
    let run = [];
    for (const p of points) {
      if (isNum(p[field])) run.push(x(p.t) + ',' + y(p[field]));
      else if (run.length) { runs.push(run); run = []; }
    }
    if (run.length) runs.push(run);
    const last = values.length ? values[values.length - 1] : null;
    const label = opts.label + ': ' + (values.length
      ? `now ${opts.format(last)}, min ${opts.format(Math.min(...values))}, ` +
        `max ${opts.format(Math.max(...values))} over the last ${Math.round(span / 1000)} s`
      : 'no data yet');
    const children = [svg('line', {class: 'spark-axis', x1: 0, x2: W, y1: H - 0.5, y2: H - 0.5})];
    if (field === 'sr' && lo < 99) {
      children.push(svg('line', {class: 'spark-ref', x1: 0, x2: W, y1: y(99), y2: y(99)}));
    }
    for (const r of runs) {
      if (field === 'rps' && r.length > 1) {
        const firstX = r[0].split(',')[0];
        const lastX = r[r.length - 1].split(',')[0];
        children.push(svg('polygon', {class: 'spark-area',
                                      points: `${firstX},${H} ${r.join(' ')} ${lastX},${H}`}));
      }
      if (r.length === 1) {
        const [cx, cy] = r[0].split(',');
        children.push(svg('circle', {class: 'spark-dot', cx, cy, r: 1.6}));
      } else {
        children.push(svg('polyline', {class: 'spark-line', points: r.join(' ')}));
      }
    }
    if (runs.length) {
      const tail = runs[runs.length - 1];
      const [cx, cy] = tail[tail.length - 1].split(',');
      children.push(svg('circle', {class: 'spark-end', cx, cy, r: 2}));
    }
    return svg('svg', {class: 'spark spark-' + field + ' ' + (opts.cls || ''),
                       viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img',
                       'aria-label': label, 'data-points': values.length},
               svg('title', {text: label}), children);
  }

  // ------------------------------------------------------------------ pieces

  function badge(cls, iconName, ...content) {
    return h('span', {class: 'badge ' + cls}, iconName ? icon(iconName) : null, ...content);
  }

  function successBadge(rate) {
    const level = successLevel(rate);
    return h('span', {class: 'sr ' + level.cls, 'data-success': isNum(rate) ? rate : ''},
             icon(level.icon), h('span', {class: 'sr-value', text: successText(rate)}),
             sr(' (' + level.word + ')'));
  }

  function describeFault(fault) {
    const parts = [];
    if (fault && fault.abort) {
      parts.push(`abort ${fault.abort.status} on ${pct(fault.abort.percent)} of requests`);
    }
    if (fault && fault.delay) {
      parts.push(`delay ${seconds(fault.delay.fixed_s)} on ${pct(fault.delay.percent)} of requests`);
    }
    return parts.join(' and ') || 'fault';
  }

  /** The text inside a split segment: name and share when it fits, the share alone in a
   *  narrow one, nothing in a sliver (the table and the aria-label always have it all). */
  function segLabel(name, fraction) {
    const bar = document.querySelector('.split-bar');
    const px = fraction * (bar ? bar.clientWidth : 800);
    const fits = chars => px >= chars * 6.8 + 14;   // 12px text, 6px padding each side
    const value = share(fraction);
    if (!fits(value.length)) return null;
    return h('span', {class: 'seg-label'},
             fits(name.length + 1 + value.length) ? [h('span', {class: 'seg-name', text: name}), ' '] : null,
             value);
  }

  /** One horizontal split: segments per backend, text inside wide ones, and optionally
   *  the target's boundaries as markers (to read observed against target). */
  function splitBar(kind, label, fractions, names, markers, note, rest) {
    const known = fractions.some(isNum);
    const described = names.map((n, i) => `${n} ${share(fractions[i])}`).join(', ');
    const segments = [];
    if (known) {
      fractions.forEach((fraction, i) => {
        if (!isNum(fraction) || fraction <= 0) return;
        segments.push(h('div', {class: `seg c${i % PALETTE}`, 'data-key': 'seg' + i,
                                'data-backend': names[i], style: {width: (fraction * 100) + '%'},
                                title: `${names[i]}: ${share(fraction)}`},
                        segLabel(names[i], fraction)));
      });
    }
    if (known && rest && rest.fraction >= 0.005) {
      segments.push(h('div', {class: 'seg seg-rest', 'data-key': 'rest', title: rest.title,
                              style: {width: (rest.fraction * 100) + '%'}},
                      segLabel(rest.label, rest.fraction)));
    }
    const ticks = (markers || []).map((at, i) => h('div', {class: 'marker', 'data-key': 'm' + i,
                                                           style: {left: (at * 100) + '%'}}));
    const summary = known ? fractions.map(f => isNum(f) ? pct(f * 100) : '—').join(' / ')
                          : (note || 'no traffic');
    const restText = known && rest && rest.fraction >= 0.005
      ? `, ${rest.label} ${share(rest.fraction)}` : '';
    return h('div', {class: 'split-row split-' + kind, 'data-key': 'split-' + kind},
             h('div', {class: 'split-label'}, h('span', {text: label})),
             h('div', {class: 'split-bar' + (known ? '' : ' split-empty'), role: 'img',
                       'data-split': kind,
                       'aria-label': `${label}: ${known ? described + restText : summary}`},
               segments, ticks),
             h('div', {class: 'split-values num', 'data-split-values': kind, text: summary}));
  }

  function routeCard(route) {
    const backends = route.backends || [];
    const names = shortNames(backends);
    const fileTotal = backends.reduce((sum, b) => sum + (isNum(b.configured_weight)
                                                         ? b.configured_weight : 0), 0);
    const target = backends.map(b => b.share);
    const observed = backends.map(b => isNum(b.observed_share) ? b.observed_share : null);
    const fromFile = backends.map(b => fileTotal ? b.configured_weight / fileTotal : 0);
    // Observed shares count every request of the route; those answered by an injected
    // abort (which no backend saw) or by a backend no longer configured make up the rest.
    let rest = null;
    if (observed.some(isNum)) {
      const fraction = 1 - observed.reduce((sum, f) => sum + (f || 0), 0);
      const injected = route.injected_abort;
      const aborts = injected && isNum(injected.observed_share) && injected.observed_share > 0;
      rest = {fraction, label: aborts ? 'injected abort' : 'other',
              title: 'requests answered by an injected abort (fault), which no backend saw, ' +
                     'or by backends no longer configured'};
    }
    const markers = [];
    let acc = 0;
    for (let i = 0; i < target.length - 1; i++) {
      acc += target[i] || 0;
      if (acc > 0 && acc < 1) markers.push(acc);
    }
    let requests = 0, successes = 0, totalRps = 0;
    for (const b of backends) {
      if (isNum(b.requests) && isNum(b.success_rate)) {
        requests += b.requests;
        successes += b.requests * b.success_rate / 100;
      }
      if (isNum(b.rps)) totalRps += b.rps;
    }
    let routeRate = requests ? successes / requests * 100 : null;
    // The route as its callers saw it (injected aborts included), from a proxy that says.
    if (route.stats) {
      routeRate = isNum(route.stats.success_rate) ? route.stats.success_rate : null;
      totalRps = isNum(route.stats.rps) ? route.stats.rps : 0;
    }
    const window = state.routes && state.routes.window_seconds;

    const badges = [];
    const notes = [];
    if (route.override) {
      const o = route.override;
      badges.push(badge('badge-override', 'swap', 'Override',
                        h('span', {class: 'badge-detail'}, ' · set at run time by ',
                          h('strong', {text: o.source || 'unknown'}),
                          isNum(o.since) ? [' · ', since(localMs(o.since))] : null)));
      notes.push(h('p', {class: 'note', 'data-key': 'override-note'},
                   'The config file says ',
                   backends.map((b, i) => [i ? ', ' : '', h('span', {class: 'mono', text: names[i]}),
                                           ' ' + share(fromFile[i])]),
                   '. Back to it: ',
                   h('code', {text: `pyproxy set-weight ${route.name} --clear`})));
    }
    // A backend with no endpoint to send to: what its share gets (when_backend_unavailable).
    const policy = route.when_backend_unavailable || 'failover';
    backends.forEach((b, i) => {
      if (b.available !== false) return;
      badges.push(badge('badge-bad', 'x', `${names[i]}: no available endpoint`));
      notes.push(h('p', {class: 'note', 'data-key': 'unavailable:' + b.backend}, icon('warn'), ' ',
                   h('span', {class: 'mono', text: b.backend}),
                   ' has no available endpoint (every one ejected or unhealthy): ',
                   UNAVAILABLE_TEXT[policy] || policy));
    });
    let banner = null;
    const rf = route.runtime_fault;
    if (rf) {
      const remaining = isNum(rf.remaining_s) ? rf.remaining_s : 0;
      const deadline = state.receivedAt + remaining * 1000;
      const total = isNum(rf.expires) && isNum(rf.since) ? (rf.expires - rf.since) * 1000 : 0;
      badges.push(badge('badge-fault', 'bolt', 'Fault injected'));
      banner = h('div', {class: 'banner banner-fault', 'data-key': 'fault', 'data-fault': route.name},
                 icon('bolt', 'banner-icon'),
                 h('div', {class: 'banner-body'},
                   h('p', {class: 'banner-title'}, h('strong', {text: 'Fault injection active'}),
                     ' — ', describeFault(rf)),
                   h('p', {class: 'banner-meta'},
                     icon('clock'), ' Removes itself in ',
                     countdown(deadline, total, 'fault-countdown'),
                     isNum(rf.expires) ? ` (at ${timeOfDay(localMs(rf.expires))})` : '',
                     ' · stop now: ', h('code', {text: `pyproxy fault clear ${route.name}`})),
                   total ? h('div', {class: 'fault-progress', 'aria-hidden': 'true'},
                             h('div', {class: 'fault-progress-fill',
                                       'data-progress-deadline': Math.round(deadline),
                                       'data-progress-total': Math.round(total),
                                       style: {width: Math.min(100, Math.max(0,
                                         (deadline - Date.now()) / total * 100)).toFixed(2) + '%'}}))
                         : null));
    } else if (route.fault) {
      notes.push(h('p', {class: 'note', 'data-key': 'static-fault'}, icon('bolt'),
                   ' Configured fault (from the config file): ', describeFault(route.fault)));
    }

    const hosts = route.hosts && route.hosts.length
      ? route.hosts.map((host, i) => h('span', {class: 'chip chip-host mono', 'data-key': 'host' + i,
                                              title: host, text: host}))
      : [h('span', {class: 'chip chip-muted', text: 'any host'})];

    const splits = backends.length ? h('div', {class: 'splits', 'data-key': 'splits'},
      splitBar('target', route.override ? 'Target (override)' : 'Target', target, names),
      splitBar('observed', `Observed${window ? ` · last ${window} s` : ''}`, observed, names,
               markers, 'no traffic in the window', rest),
      route.override ? splitBar('file', 'Config file', fromFile, names) : null) : null;

    return h('article', {class: 'card route' + (rf ? ' has-fault' : ''), 'data-key': 'route:' + route.name,
                         'data-route': route.name, 'aria-labelledby': 'route-title-' + cssId(route.name)},
      h('header', {class: 'card-head'},
        h('div', {class: 'card-title'},
          h('h3', {id: 'route-title-' + cssId(route.name)},
            h('span', {class: 'muted small', text: 'route '}), h('span', {class: 'mono', text: route.name})),
          h('div', {class: 'chips', 'aria-label': 'hosts'}, hosts)),
        h('div', {class: 'card-stats'},
          h('span', {class: 'stat'}, h('span', {class: 'stat-value num', text: rps(totalRps)}),
            h('span', {class: 'stat-unit', text: ' rps'})),
          h('span', {class: 'stat'}, successBadge(routeRate), h('span', {class: 'stat-unit', text: ' success'})))),
      badges.length ? h('div', {class: 'badges', 'data-key': 'badges'}, badges) : null,
      banner,
      splits,
      notes,
      backends.length ? backendTable(route, names) :
        h('p', {class: 'muted', text: 'No backends: this route redirects or answers directly.'}));
  }

  const UNAVAILABLE_TEXT = {
    failover: 'its share goes to the other available backends, by weight (503 UH if none).',
    panic: 'its share goes to its endpoints anyway, ejected or unhealthy ones included.',
    fail: 'its share is answered 503 UH.',
  };

  function cssId(text) {
    return String(text).replace(/[^A-Za-z0-9_-]/g, c => '_' + c.charCodeAt(0).toString(16));
  }

  function backendTable(route, names) {
    // Observed shares are of all the route's requests; the split only sees those no injected
    // abort answered, so a backend's target share of the route is its weight times theirs.
    const injected = route.injected_abort;
    const passed = injected && isNum(injected.observed_share) ? 1 - injected.observed_share : 1;
    const rows = (route.backends || []).map((b, i) => {
      const series = state.history.get(historyKey(route.name, b.backend)) || [];
      const level = successLevel(b.success_rate);
      const delta = isNum(b.observed_share) && isNum(b.share)
        ? (b.observed_share - b.share * passed) * 100 : null;
      return h('tr', {'data-key': 'b:' + b.backend, 'data-backend': b.backend},
        h('th', {scope: 'row'},
          h('span', {class: `swatch c${i % PALETTE}`, 'aria-hidden': 'true'}),
          h('span', {class: 'mono', text: b.backend}),
          h('div', {class: 'endpoints muted small'},
            (b.endpoints || []).map((ep, j) => [j ? ', ' : '', h('span', {class: 'mono', text: ep})]))),
        h('td', {class: 'num'},
          h('span', {class: 'cell-main', 'data-field': 'share', text: share(b.share)}),
          route.override ? h('div', {class: 'muted small'},
            'file ' + (isNum(b.configured_weight) ? b.configured_weight : '—')) : null),
        h('td', {class: 'num'},
          h('span', {class: 'cell-main', 'data-field': 'observed', text: share(b.observed_share)}),
          isNum(delta) ? h('div', {class: 'muted small',
                                   text: `${delta >= 0 ? '+' : '−'}${Math.abs(delta).toFixed(1)} pts`}) : null),
        h('td', {class: 'chart-cell'},
          h('div', {class: 'cell-chart'},
            h('span', {'data-field': 'success'}, successBadge(b.success_rate)),
            sparkline(series, 'sr', {label: `Success rate of ${b.backend}`, format: successText,
                                     cls: level.cls}))),
        h('td', {class: 'chart-cell'},
          h('div', {class: 'cell-chart'},
            h('span', {class: 'cell-main num', 'data-field': 'rps', text: rps(b.rps)}),
            sparkline(series, 'rps', {label: `Requests per second to ${b.backend}`, format: rps,
                                      cls: 'c' + (i % PALETTE)}))),
        h('td', {class: 'num', 'data-field': 'p50', text: latency(b.p50)}),
        h('td', {class: 'num', 'data-field': 'p95', text: latency(b.p95)}),
        h('td', {class: 'num', 'data-field': 'p99', text: latency(b.p99)}),
        h('td', {class: 'num muted', 'data-field': 'requests',
                 text: isNum(b.requests) ? b.requests.toLocaleString('en') : '—'}));
    });
    if (injected) rows.push(injectedRow(injected));
    const window = state.routes && state.routes.window_seconds;
    return h('div', {class: 'table-scroll', 'data-key': 'backends'},
      h('table', {class: 'backends'},
        h('caption', {class: 'sr-only', text: `Backends of route ${route.name}`}),
        h('thead', null, h('tr', null,
          h('th', {scope: 'col', text: 'Backend'}),
          h('th', {scope: 'col', class: 'num', text: 'Target'}),
          h('th', {scope: 'col', class: 'num', text: 'Observed'}),
          h('th', {scope: 'col', text: 'Success rate'}),
          h('th', {scope: 'col', text: 'RPS'}),
          h('th', {scope: 'col', class: 'num', text: 'p50'}),
          h('th', {scope: 'col', class: 'num', text: 'p95'}),
          h('th', {scope: 'col', class: 'num', text: 'p99'}),
          h('th', {scope: 'col', class: 'num', title: window ? `requests in the last ${window} s` : null,
                   text: 'Requests'}))),
        h('tbody', null, rows)));
  }

  /** The route's requests an injected abort answered: a row of their own, so the shares
   *  add up to 100 % and their failures are not hidden behind a healthy backend. */
  function injectedRow(row) {
    const cause = isNum(row.status) ? `abort ${row.status}` +
      (isNum(row.percent) ? ` on ${pct(row.percent)} of requests` : '') : 'abort';
    return h('tr', {class: 'injected', 'data-key': 'injected', 'data-injected': ''},
      h('th', {scope: 'row'},
        h('span', {class: 'swatch swatch-injected', 'aria-hidden': 'true'}),
        h('span', {text: row.label || 'injected abort (fault)'}),
        h('div', {class: 'muted small', text: `${cause} · answered by pyproxy, no backend saw them`})),
      h('td', {class: 'num muted', 'data-field': 'share', text: '—'}),
      h('td', {class: 'num'},
        h('span', {class: 'cell-main', 'data-field': 'observed', text: share(row.observed_share)})),
      h('td', {class: 'chart-cell'},
        h('div', {class: 'cell-chart'}, h('span', {'data-field': 'success'}, successBadge(row.success_rate)))),
      h('td', {class: 'chart-cell'},
        h('div', {class: 'cell-chart'}, h('span', {class: 'cell-main num', 'data-field': 'rps', text: rps(row.rps)}))),
      h('td', {class: 'num', 'data-field': 'p50', text: latency(row.p50)}),
      h('td', {class: 'num', 'data-field': 'p95', text: latency(row.p95)}),
      h('td', {class: 'num', 'data-field': 'p99', text: latency(row.p99)}),
      h('td', {class: 'num muted', 'data-field': 'requests',
               text: isNum(row.requests) ? row.requests.toLocaleString('en') : '—'}));
  }

  function servicesSection() {
    const services = (state.services && state.services.services) || [];
    const cards = services.map(service => {
      const endpoints = service.endpoints || [];
      const ejected = endpoints.filter(ep => ep.ejected).length;
      const unhealthy = endpoints.filter(ep => ep.healthy === false).length;
      // DNS discovery: each name as a row, the addresses it resolved to under it.
      const names = {};
      for (const n of (service.discovery && service.discovery.names) || []) names[n.name] = n;
      let lastName = null;
      const rows = [];
      const endpointRow = ep => {
        const ej = ep.ejection || {};
        const hc = ep.health_check;
        const health = ep.healthy === false
          ? badge('badge-bad', 'x', 'unhealthy')
          : badge('badge-good', 'check', hc ? 'healthy' : 'up');
        let outlier;
        if (ep.ejected) {
          // "Ejected consecutive_5xx · back in 23 s (at 01:02:03 UTC)"
          const until = isNum(ej.until) ? localMs(ej.until) : null;
          outlier = h('span', {class: 'ejection'},
            badge('badge-ejected', 'eject', 'Ejected'),
            h('span', {class: 'small'}, ' ', h('span', {class: 'mono', text: ej.reason || 'outlier'}),
              until ? [' · back in ', countdown(until, 0, 'eject-countdown', 'seconds'),
                       ` (at ${utcTimeOfDay(ej.until)})`] : null,
              isNum(ej.times_ejected) && ej.times_ejected > 1 ? ` · ${ej.times_ejected}× ejected` : null));
        } else {
          outlier = h('span', {class: 'muted small'},
            ej.times_ejected ? `in rotation (ejected ${ej.times_ejected}× before)` : 'in rotation');
        }
        const labels = Object.entries(ep.labels || {}).map(([k, v]) =>
          h('span', {class: 'chip mono', 'data-key': 'l:' + k, title: `${k}=${v}`, text: `${k}=${v}`}));
        return h('tr', {'data-key': 'ep:' + ep.address, 'data-endpoint': ep.address,
                        class: ep.ejected ? 'row-ejected' : null},
          h('th', {scope: 'row', class: 'mono', text: ep.resolved_from ? '\u2003' + ep.address : ep.address,
                   title: ep.resolved_from ? `resolved from ${ep.resolved_from}` : null}),
          h('td', null, h('div', {class: 'chips'}, labels.length ? labels : h('span', {class: 'muted', text: '—'}))),
          h('td', {title: hc && hc.last_result ? `last probe: ${hc.last_result}` : null}, health),
          h('td', null, outlier),
          h('td', {class: 'num', text: isNum(ep.active_requests) ? ep.active_requests : '—'}));
      };
      for (const ep of endpoints) {
        if (ep.resolved_from && ep.resolved_from !== lastName) {
          const dns = names[ep.resolved_from] || {};
          const count = (dns.addresses || []).length;
          rows.push(h('tr', {'data-key': 'dns:' + ep.resolved_from, class: 'dns-name'},
            h('th', {scope: 'rowgroup', colspan: '5', class: 'small'},
              h('span', {class: 'mono', text: ep.resolved_from}),
              h('span', {class: 'muted', text: ` · DNS, ${count} address${count === 1 ? '' : 'es'}`}),
              dns.error ? h('span', {class: 'text-bad',
                                     text: ` · resolution failing (${dns.error}); last good answer kept`}) : null)));
        }
        lastName = ep.resolved_from || null;
        rows.push(endpointRow(ep));
      }
      const breaker = service.circuit_breaker;
      let breakerLine = null;
      if (breaker) {
        const parts = [];
        for (const name of ['requests', 'pending', 'connections', 'retries']) {
          const item = breaker[name];
          if (!item || !isNum(item.active) || !isNum(item.max)) continue;
          // Over max only by endpoints' first connections, which are always allowed: say so,
          // or "connections 2/1" reads as a broken limit.
          parts.push(isNum(item.above_max) && item.above_max > 0
            ? `${name} ${item.active}/${item.max} (+${item.above_max}: an endpoint's first connection is always allowed)`
            : `${name} ${item.active}/${item.max}`);
        }
        const overflows = Object.entries(breaker.overflows || {}).filter(([, n]) => n);
        breakerLine = h('p', {class: 'muted small breaker'}, 'Circuit breaker: ', parts.join(' · '),
          overflows.length ? h('span', {class: 'text-bad'}, ' · overflowed: ',
            overflows.map(([k, n]) => `${k} ${n}`).join(', ')) : null);
      }
      const summary = [];
      if (ejected) summary.push(badge('badge-ejected', 'eject', `${ejected} ejected`));
      if (unhealthy) summary.push(badge('badge-bad', 'x', `${unhealthy} unhealthy`));
      if (!ejected && !unhealthy) summary.push(badge('badge-good', 'check', 'all in rotation'));
      return h('article', {class: 'card service', 'data-key': 'svc:' + service.name,
                           'data-service': service.name},
        h('header', {class: 'card-head'},
          h('div', {class: 'card-title'},
            h('h3', null, h('span', {class: 'muted small', text: 'service '}),
              h('span', {class: 'mono', text: service.name})),
            h('span', {class: 'muted small', text: `${endpoints.length} endpoint${endpoints.length === 1 ? '' : 's'}` +
                                                    (service.load_balancer ? ` · ${service.load_balancer}` : '')})),
          h('div', {class: 'badges'}, summary)),
        h('div', {class: 'table-scroll'},
          h('table', {class: 'endpoints-table'},
            h('caption', {class: 'sr-only', text: `Endpoints of service ${service.name}`}),
            h('thead', null, h('tr', null,
              h('th', {scope: 'col', text: 'Endpoint'}), h('th', {scope: 'col', text: 'Labels'}),
              h('th', {scope: 'col', text: 'Health'}), h('th', {scope: 'col', text: 'Outlier detection'}),
              h('th', {scope: 'col', class: 'num', text: 'Active'}))),
            h('tbody', null, rows))),
        breakerLine);
    });
    return h('section', {class: 'section', 'data-key': 'services', 'aria-labelledby': 'h-services'},
      h('h2', {id: 'h-services', text: 'Services'}),
      cards.length ? cards : h('p', {class: 'muted', text: 'No services configured.'}));
  }

  const PHASE_STYLE = {
    initializing: 'info', progressing: 'info', waiting_promotion: 'warn', paused: 'muted',
    promoting: 'good', promoted: 'good', rolling_back: 'bad', rolled_back: 'bad', blocked: 'bad',
  };
  const PHASE_ICON = {
    paused: 'pause', promoted: 'check', promoting: 'check', rolled_back: 'x', rolling_back: 'x',
    blocked: 'x', waiting_promotion: 'clock',
  };

  function canaryCard(c) {
    const phase = String(c.phase || 'unknown');
    const weight = isNum(c.candidate_weight) ? c.candidate_weight : 0;
    const max = isNum(c.max_weight) ? c.max_weight : 100;
    const steps = Array.isArray(c.steps) ? c.steps.filter(isNum) : [];
    const failed = isNum(c.failed_checks) ? c.failed_checks : 0;
    const threshold = isNum(c.threshold) ? c.threshold : null;
    const events = Array.isArray(c.events) ? c.events.slice().reverse() : [];
    const key = 'canary:' + c.name;
    const stepText = isNum(c.step) && steps.length ? `step ${c.step} of ${steps.length}` : null;

    const pips = [];
    if (threshold) {
      for (let i = 0; i < threshold; i++) {
        pips.push(h('span', {class: 'pip' + (i < failed ? ' pip-on' : ''), 'aria-hidden': 'true'}));
      }
    }
    const last = c.last_check;
    let lastLine = null;
    if (last && last.verdict) {
      const good = last.verdict === 'pass';
      const kind = good ? 'good' : last.verdict === 'fail' ? 'bad' : 'muted';
      lastLine = h('p', {class: 'small'},
        badge('badge-' + kind, good ? 'check' : last.verdict === 'fail' ? 'x' : 'minus',
              `last check: ${String(last.verdict).replace('_', ' ')}`),
        Array.isArray(last.reasons) && last.reasons.length
          ? h('span', {class: 'muted', text: ' ' + last.reasons.join('; ')}) : null);
    }
    const eventItem = e => h('li', {'data-key': `${e.time}|${e.message}`},
      h('time', {class: 'mono muted', text: isNum(e.time) ? timeOfDay(localMs(e.time)) : '—'}),
      isNum(e.weight) ? h('span', {class: 'ev-weight num', text: pct(e.weight)}) : h('span'),
      h('span', {class: 'ev-msg', text: e.message || ''}));
    const moreKey = key + ':more';
    return h('article', {class: 'card canary', 'data-key': key, 'data-canary': c.name},
      h('header', {class: 'card-head'},
        h('div', {class: 'card-title'},
          h('h3', null, h('span', {class: 'muted small', text: 'canary '}), h('span', {class: 'mono', text: c.name})),
          h('span', {class: 'muted small'}, 'route ', h('span', {class: 'mono', text: c.route || '—'}),
            c.primary ? [' · ', h('span', {class: 'mono', text: c.primary}), ' → ',
                         h('span', {class: 'mono', text: c.candidate || '?'})] : null)),
        badge('badge-' + (PHASE_STYLE[phase] || 'muted') + ' phase', PHASE_ICON[phase] || 'flask',
              phase.replace(/_/g, ' '))),
      c.message ? h('p', {class: 'note text-bad', text: c.message}) : null,
      h('div', {class: 'canary-progress'},
        h('div', {class: 'canary-track', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100,
                  'aria-valuenow': weight, 'aria-label': `candidate weight ${pct(weight)} of a maximum of ${pct(max)}`},
          h('div', {class: 'canary-max', style: {width: Math.min(100, max) + '%'}}),
          h('div', {class: 'canary-fill', style: {width: Math.min(100, weight) + '%'}}),
          steps.map((s, i) => h('div', {class: 'canary-step' + (s <= weight ? ' done' : ''),
                                        'data-key': 'st' + i, style: {left: Math.min(100, s) + '%'}}))),
        h('p', {class: 'canary-meta small'},
          h('strong', {class: 'num', text: pct(weight)}), ` to the candidate (max ${pct(max)})`,
          stepText ? ' · ' + stepText : '',
          threshold ? [' · failed checks ', h('span', {class: 'pips'}, pips),
                       h('span', {class: 'num', text: ` ${failed}/${threshold}`})] : null,
          isNum(c.next_check_in_s) && ACTIVE_PHASES.has(phase)
            ? [' · next check in ', countdown(state.receivedAt + c.next_check_in_s * 1000, 0)] : null)),
      lastLine,
      events.length ? h('div', {class: 'events'},
        h('h4', {class: 'small muted', text: 'Events (newest first)'}),
        h('ol', {class: 'event-list'}, events.slice(0, EVENTS_SHOWN).map(eventItem)),
        events.length > EVENTS_SHOWN ? h('details', {'data-key': moreKey, open: state.open.has(moreKey)},
          h('summary', {class: 'small', text: `${events.length - EVENTS_SHOWN} earlier events`}),
          h('ol', {class: 'event-list'}, events.slice(EVENTS_SHOWN).map(eventItem))) : null)
        : h('p', {class: 'muted small', text: 'No events yet.'}));
  }

  function canariesSection() {
    if (state.canariesAvailable !== true) return null;
    const list = (state.canaries && Array.isArray(state.canaries.canaries)) ? state.canaries.canaries : [];
    return h('section', {class: 'section', 'data-key': 'canaries', 'aria-labelledby': 'h-canaries'},
      h('h2', {id: 'h-canaries', text: 'Canaries'}),
      list.length ? list.map(canaryCard)
        : h('p', {class: 'card muted empty'}, 'No automated canaries. Add a ',
            h('code', {text: 'canaries:'}), ' entry to the config to let pyproxy step the weight itself.'));
  }

  function reloadSection() {
    const config = state.config || {};
    const last = config.last_reload || {};
    const ok = last.result !== 'failure';
    const errors = Array.isArray(last.errors) ? last.errors : [];
    const warnings = Array.isArray(config.warnings) ? config.warnings : [];
    const files = Array.isArray(config.files) ? config.files : [];
    return h('section', {class: 'section', 'data-key': 'reload', 'aria-labelledby': 'h-reload'},
      h('h2', {id: 'h-reload', text: 'Configuration'}),
      h('article', {class: 'card reload' + (ok ? '' : ' reload-failed')},
        h('dl', {class: 'facts'},
          h('div', null, h('dt', {text: 'Generation'}), h('dd', {class: 'num', 'data-field': 'generation',
                                                                 text: isNum(config.generation) ? config.generation : '—'})),
          h('div', null, h('dt', {text: 'Last reload'}),
            h('dd', {'data-field': 'reload-result'},
              badge(ok ? 'badge-good' : 'badge-bad', ok ? 'check' : 'x', String(last.result || 'unknown')),
              isNum(last.time) ? [' ', h('span', {class: 'small muted'}, timeOfDay(localMs(last.time)), ' · ',
                                         since(localMs(last.time)))] : null)),
          files.length ? h('div', null, h('dt', {text: files.length === 1 ? 'File' : 'Files'}),
            h('dd', null, files.map((f, i) => h('div', {class: 'mono small', 'data-key': 'f' + i, text: f})))) : null),
        errors.length ? h('div', {class: 'errors', role: 'alert'},
          h('p', null, icon('x'), h('strong', {text: ' Last reload was rejected'}),
            ' — the previous config keeps serving:'),
          h('ul', null, errors.map((e, i) => h('li', {class: 'mono small', 'data-key': 'e' + i, text: e})))) : null,
        warnings.length ? h('details', {'data-key': 'warnings', open: state.open.has('warnings')},
          h('summary', {class: 'small'}, icon('warn'), ` ${warnings.length} config warning${warnings.length === 1 ? '' : 's'}`),
          h('ul', null, warnings.map((w, i) => h('li', {class: 'mono small', 'data-key': 'w' + i, text: w})))) : null));
  }

  function kpis() {
    const routes = (state.routes && state.routes.routes) || [];
    let requests = 0, successes = 0, total = 0, overrides = 0, faults = 0;
    for (const route of routes) {
      if (route.override) overrides++;
      if (route.runtime_fault) faults++;
      // Each route's own totals count its injected aborts; the backends' alone would not.
      const parts = route.stats ? [route.stats] : route.backends || [];
      for (const b of parts) {
        if (isNum(b.rps)) total += b.rps;
        if (isNum(b.requests) && isNum(b.success_rate)) {
          requests += b.requests;
          successes += b.requests * b.success_rate / 100;
        }
      }
    }
    // Faults in effect, the config's too (a run-time fault replaces its route's configured
    // one: that one is listed inactive; one at 0 % does nothing). An older proxy lists
    // run-time faults only.
    const listed = state.faults && state.faults.faults;
    if (Array.isArray(listed) && listed.some(f => f.source)) {
      const draws = f => (f.abort && f.abort.percent > 0) || (f.delay && f.delay.percent > 0) ||
                         f.header_triggered;
      faults = listed.filter(f => f.active !== false && draws(f)).length;
    }
    let ejected = 0, endpoints = 0;
    for (const s of (state.services && state.services.services) || []) {
      for (const ep of s.endpoints || []) { endpoints++; if (ep.ejected) ejected++; }
    }
    const canaries = (state.canaries && state.canaries.canaries) || [];
    const running = canaries.filter(c => ACTIVE_PHASES.has(c.phase)).length;
    const rate = requests ? successes / requests * 100 : null;
    const level = successLevel(rate);
    const tile = (key, label, value, cls, iconName) => h('div', {class: 'kpi ' + (cls || ''), 'data-key': key, 'data-kpi': key},
      h('dt', null, iconName ? icon(iconName) : null, label), h('dd', {class: 'num', text: value}));
    return h('dl', {class: 'kpis', 'data-key': 'kpis', 'aria-label': 'Summary'},
      tile('rps', 'Requests / s', rps(total)),
      tile('success', 'Success rate', successText(rate), level.cls, level.icon),
      tile('routes', 'Routes', String(routes.length)),
      tile('overrides', 'Overrides', String(overrides), overrides ? 'kpi-override' : 'kpi-quiet', overrides ? 'swap' : null),
      tile('faults', 'Active faults', String(faults), faults ? 'kpi-fault' : 'kpi-quiet', faults ? 'bolt' : null),
      tile('ejected', 'Ejected endpoints', `${ejected} / ${endpoints}`, ejected ? 'kpi-ejected' : 'kpi-quiet', ejected ? 'eject' : null),
      state.canariesAvailable === true ? tile('canaries', 'Canaries running', String(running), running ? 'kpi-canary' : 'kpi-quiet', running ? 'flask' : null) : null);
  }

  // ------------------------------------------------------------------ render

  function render() {
    const app = document.getElementById('app');
    if (!state.routes) return;
    const config = state.config || {};
    const last = config.last_reload || {};
    const routes = state.routes.routes || [];
    const next = h('div', {id: 'app', class: state.connected === false ? 'stale' : null},
      last.result === 'failure' ? h('div', {class: 'banner banner-error', 'data-key': 'reload-failed', role: 'alert'},
        icon('x', 'banner-icon'),
        h('div', {class: 'banner-body'},
          h('p', {class: 'banner-title'}, h('strong', {text: 'Config reload rejected'}),
            ` — generation ${isNum(config.generation) ? config.generation : '?'} keeps serving.`),
          h('p', {class: 'banner-meta', text: (last.errors || [])[0] || ''}))) : null,
      kpis(),
      h('section', {class: 'section', 'data-key': 'routes', 'aria-labelledby': 'h-routes'},
        h('h2', {id: 'h-routes'}, 'Routes', h('span', {class: 'h2-note muted small',
          text: state.routes.window_seconds ? ` live stats over the last ${state.routes.window_seconds} s` : ''})),
        routes.length ? routes.map(routeCard) : h('p', {class: 'card muted empty', text: 'No routes configured.'})),
      h('div', {class: 'columns', 'data-key': 'columns'},
        h('div', {class: 'column', 'data-key': 'col-a'}, servicesSection()),
        h('div', {class: 'column', 'data-key': 'col-b'}, canariesSection(), reloadSection())));
    morph(app, next);
    app.removeAttribute('aria-busy');
    renderHeader();
  }

  function renderHeader() {
    const conn = document.getElementById('conn');
    const text = document.getElementById('conn-text');
    const updated = document.getElementById('updated');
    let cls, label;
    if (state.connected === true) { cls = 'conn-live'; label = 'Live'; }
    else if (state.connected === false) { cls = 'conn-down'; label = 'Disconnected — retrying'; }
    else { cls = 'conn-connecting'; label = 'Connecting…'; }
    const full = 'conn ' + cls;
    if (conn.className !== full) conn.className = full;
    if (text.textContent !== label) text.textContent = label;
    let info = '';
    if (state.lastOk) {
      const generation = state.config && isNum(state.config.generation) ? ` · config generation ${state.config.generation}` : '';
      info = (state.connected === false ? 'last data ' + ago(Date.now() - state.lastOk)
                                        : 'updated ' + timeOfDay(state.lastOk)) + generation;
    }
    if (updated.textContent !== info) updated.textContent = info;
    document.title = (state.connected === false ? '(disconnected) ' : '') +
      (state.routes && (state.routes.routes || []).some(r => r.runtime_fault) ? '⚡ ' : '') + 'pyproxy dashboard';
  }

  // ------------------------------------------------------------------ polling

  async function getJSON(path, signal) {
    const response = await fetch(path, {cache: 'no-store', signal, credentials: 'same-origin',
                                        headers: {Accept: 'application/json'}});
    if (!response.ok) {
      const error = new Error(`${path}: HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return {body: await response.json(), date: response.headers.get('Date')};
  }

  async function poll() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    const sent = Date.now();
    let askCanaries = state.canariesAvailable !== false;
    if (!askCanaries && --state.canaryCountdown <= 0) askCanaries = true;
    try {
      const canaries = askCanaries
        ? getJSON('api/v1/canaries', controller.signal).then(
            r => ({ok: true, body: r.body}),
            e => ({ok: false, status: e.status, error: e}))
        : Promise.resolve(null);
      const [routes, services, faults, config, canaryResult] = await Promise.all([
        getJSON('api/v1/routes', controller.signal), getJSON('api/v1/services', controller.signal),
        getJSON('api/v1/faults', controller.signal), getJSON('api/v1/config', controller.signal),
        canaries]);
      const received = Date.now();
      if (canaryResult) {
        if (canaryResult.ok && canaryResult.body && typeof canaryResult.body === 'object') {
          state.canariesAvailable = true;
          state.canaries = canaryResult.body;
        } else if (canaryResult.status === 404 || canaryResult.status === 405 || canaryResult.ok) {
          state.canariesAvailable = false;   // an older proxy: no canary API
          state.canaries = null;
          state.canaryCountdown = CANARY_RECHECK_POLLS;
        } else if (!canaryResult.status) {
          throw canaryResult.error;         // the proxy went away mid-poll
        }
        // other statuses (500…): keep the last answer
      }
      state.routes = routes.body;
      state.services = services.body;
      state.faults = faults.body;
      state.config = config.body;
      state.offsetMs = clockOffset(routes, sent, received);
      state.receivedAt = received;
      state.lastOk = received;
      state.connected = true;
      record(received);
      render();
      return true;
    } catch (error) {
      state.connected = false;
      recordGap(Date.now());
      if (state.routes) render(); else renderHeader();
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The server's clock minus ours, to place wall-clock times (ejections, reloads) on this
   *  browser's clock. A running fault gives it to the millisecond; otherwise the Date header
   *  does to the second, and under two seconds of difference counts as none. */
  function clockOffset(routes, sent, received) {
    const mid = (sent + received) / 2;
    for (const route of routes.body.routes || []) {
      const f = route.runtime_fault;
      if (f && isNum(f.expires) && isNum(f.remaining_s)) return (f.expires - f.remaining_s) * 1000 - received;
    }
    const date = Date.parse(routes.date || '');
    if (!isNum(date)) return 0;
    const offset = date + 500 - mid;
    return Math.abs(offset) < 2000 ? 0 : offset;
  }

  async function loop() {
    const started = Date.now();
    const ok = await poll();
    const wait = ok ? Math.max(200, POLL_MS - (Date.now() - started)) : RETRY_MS;
    setTimeout(loop, wait);
  }

  document.addEventListener('toggle', event => {
    const key = event.target && event.target.getAttribute && event.target.getAttribute('data-key');
    if (!key) return;
    if (event.target.open) state.open.add(key); else state.open.delete(key);
  }, true);

  function start() {
    renderHeader();
    loop();
    setInterval(tick, 250);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();

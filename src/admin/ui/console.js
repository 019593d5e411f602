// patgate web console: a client of the admin API (SPEC §4), served at /ui/.
//
// Invariants:
// - The operator's credential lives in sessionStorage (this tab only) and is sent as
//   `Authorization: Bearer`; no cookies, no other storage.
// - A token secret exists only while the create/regenerate result dialog is open: it
//   is never stored, and closing the dialog clears it from the DOM and from memory.
// - Everything from the API is inserted with textContent (never innerHTML).
'use strict';

(function () {
  const CRED_KEY = 'patgate.credential';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const DAY_MS = 86400000;

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  /** Builds an element; children are nodes or strings (inserted as text). */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  // ---- state ---------------------------------------------------------------

  const state = {
    caller: null,
    cursors: [], // cursors of the pages after the first, for "Next"
    nextCursor: null,
    filters: {},
    items: [],
    token: null, // the record shown on the token page
    auditCursor: null,
  };

  function credential() {
    return sessionStorage.getItem(CRED_KEY);
  }

  // ---- API -----------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error) || ('HTTP ' + status));
      this.status = status;
      this.field = body && body.field;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: 'Bearer ' + (credential() || '') };
    const init = { method, headers, credentials: 'omit', cache: 'no-store', referrerPolicy: 'no-referrer' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    const text = await resp.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = { error: text }; }
    }
    if (resp.status === 401 && state.caller) {
      signOut('Your credential was rejected (' + ((data && data.error) || '401') + '). Sign in again.');
    }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  const enc = encodeURIComponent;

  // ---- notices -------------------------------------------------------------

  let noticeTimer = null;
  function notice(msg, kind) {
    const n = $('#notice');
    n.textContent = msg;
    n.className = 'notice ' + (kind || 'ok');
    n.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { n.hidden = true; }, 6000);
  }

  // ---- formatting ----------------------------------------------------------

  function fmtTime(s, short) {
    if (!s) return '—';
    const d = new Date(s);
    if (isNaN(d)) return s;
    return d.toISOString().replace('T', ' ').slice(0, 16) + (short ? '' : ' UTC');
  }

  /** [label, css class] of a record's state, most severe first. */
  function status(r) {
    const now = Date.now();
    if (r.revokedAt) return ['revoked', 'st-revoked'];
    if (r.expiresAt && Date.parse(r.expiresAt) <= now) return ['expired', 'st-expired'];
    if (!r.isActive) return ['inactive', 'st-inactive'];
    if (r.expiresAt && Date.parse(r.expiresAt) - now <= 7 * DAY_MS) {
      const days = Math.max(0, Math.ceil((Date.parse(r.expiresAt) - now) / DAY_MS));
      return ['expires in ' + days + (days === 1 ? ' day' : ' days'), 'st-expiring'];
    }
    return ['active', 'st-active'];
  }

  function badge(r) {
    const [label, cls] = status(r);
    return el('span', { class: 'badge ' + cls, text: label });
  }

  function list(v) {
    return v && v.length ? v.join(', ') : '—';
  }

  function splitList(s) {
    return s.split(',').map((x) => x.trim()).filter((x) => x.length > 0);
  }

  // ---- validation mirroring the API's (src/lifecycle.rs, src/admin/input.rs) ----

  const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

  function checkName(v) {
    const n = [...v].length;
    if (n === 0 || n > 100 || v.trim() === '') return 'must be 1-100 characters';
    if (CONTROL.test(v)) return 'must not contain control characters';
    return null;
  }
  function checkDescription(v) {
    return [...v].length > 500 ? 'must be at most 500 characters' : null;
  }
  function checkList(items) {
    if (items.length > 100) return 'at most 100 entries';
    for (const s of items) {
      if (s.length > 100 || !/^[\x21-\x7e]+$/.test(s)) {
        return JSON.stringify(s) + ' must be 1-100 printable ASCII characters without commas or spaces';
      }
    }
    return null;
  }
  function checkIdField(v) {
    if (v.length === 0 || v.length > 200 || CONTROL.test(v)) {
      return 'must be 1-200 characters without control characters';
    }
    return null;
  }
  const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}(\/(3[0-2]|[12]?\d))?$/;
  const IPV6 = /^[0-9a-fA-F:.]*:[0-9a-fA-F:.]*(\/(12[0-8]|1[01]\d|[1-9]?\d))?$/;
  function checkIps(items) {
    if (items.length > 100) return 'at most 100 entries';
    for (const s of items) {
      if (!IPV4.test(s) && !IPV6.test(s)) return JSON.stringify(s) + ' is not a CIDR or IP address';
    }
    return null;
  }
  /** "N/S" or "N/S/B" → {requests, perSeconds[, burst]}; empty → null; else an error string. */
  function parseRate(s) {
    s = s.trim();
    if (!s) return { value: null };
    const m = /^(\d+)\s*\/\s*(\d+)(?:\s*\/\s*(\d+))?$/.exec(s);
    const bad = (n) => n !== undefined && (+n < 1 || +n > 4294967295);
    if (!m || bad(m[1]) || bad(m[2]) || bad(m[3])) {
      return { error: 'write requests/seconds or requests/seconds/burst, each at least 1 (e.g. 100/1 or 100/1/200)' };
    }
    const value = { requests: +m[1], perSeconds: +m[2] };
    if (m[3] !== undefined) value.burst = +m[3];
    return { value };
  }
  /** The form's text for a rate limit: "N/S", or "N/S/B" with a burst. */
  function rateText(r) {
    return r ? r.requests + '/' + r.perSeconds + (r.burst ? '/' + r.burst : '') : '';
  }
  /** "k=v, k2=v2" → {k: v, …} (the API's metadata rules); empty → null. */
  function parseMetadata(s) {
    const items = splitList(s);
    if (!items.length) return { value: null };
    if (items.length > 50) return { error: 'at most 50 keys' };
    const value = {};
    for (const item of items) {
      const i = item.indexOf('=');
      const k = i < 0 ? '' : item.slice(0, i).trim();
      const v = i < 0 ? '' : item.slice(i + 1).trim();
      if (!k || k.length > 100 || v.length > 1000) {
        return { error: JSON.stringify(item) + ': write key=value (keys 1-100, values up to 1000 characters)' };
      }
      value[k] = v;
    }
    return { value };
  }

  function clearErrors(form) {
    for (const p of $$('.field-error', form)) p.textContent = '';
    for (const i of $$('[aria-invalid]', form)) i.removeAttribute('aria-invalid');
  }

  /** Shows `msg` under `field` (or the form); focuses the first invalid input. */
  function fieldError(form, field, msg) {
    const p = $('.field-error[data-for="' + field + '"]', form) || $('.field-error[data-for="_form"]', form);
    if (p) p.textContent = (p.dataset.for === '_form' && field !== '_form' ? field + ': ' : '') + msg;
    const input = form.elements[field];
    if (input && input.setAttribute) {
      input.setAttribute('aria-invalid', 'true');
      if (p && p.id) input.setAttribute('aria-describedby', p.id);
    }
  }

  function focusFirstInvalid(form) {
    const i = $('[aria-invalid="true"]', form);
    if (i) i.focus();
  }

  // ---- dialogs -------------------------------------------------------------

  let lastFocus = null;
  function openDialog(d) {
    lastFocus = document.activeElement;
    d.showModal();
    const first = $('input:not([disabled]):not([readonly]), select, textarea, button', d);
    if (first) first.focus();
  }
  // Every way out of a dialog (its buttons, Escape) goes through here, so the
  // cleanup (wiping a shown secret) runs before anything else can read the page.
  function closeDialog(d) {
    if (d.id === 'dlg-secret') wipeSecret();
    if (d.open) d.close();
    if (lastFocus && document.contains(lastFocus)) lastFocus.focus();
  }

  // ---- the one-time secret ---------------------------------------------------

  function showSecret(token, title) {
    const input = $('#secret-value');
    $('#secret-h').textContent = title;
    input.value = token;
    $('#secret-copied').textContent = '';
    openDialog($('#dlg-secret'));
    input.focus();
    input.select();
  }

  function wipeSecret() {
    const input = $('#secret-value');
    input.value = '';
    input.removeAttribute('value');
    // Replace the node so no reference to the old value survives in the DOM.
    const fresh = input.cloneNode(false);
    fresh.value = '';
    input.replaceWith(fresh);
    $('#secret-copied').textContent = '';
  }

  async function copySecret() {
    const input = $('#secret-value');
    try {
      await navigator.clipboard.writeText(input.value);
      $('#secret-copied').textContent = 'Copied to the clipboard.';
    } catch (_) {
      input.focus();
      input.select();
      $('#secret-copied').textContent = 'Copy failed: the token is selected, press Ctrl+C.';
    }
  }

  // ---- sign-in -------------------------------------------------------------

  async function signIn(cred) {
    sessionStorage.setItem(CRED_KEY, cred);
    try {
      state.caller = await api('GET', '/v1/caller');
    } catch (e) {
      sessionStorage.removeItem(CRED_KEY);
      state.caller = null;
      throw e;
    }
    applyCaller();
  }

  function applyCaller() {
    const c = state.caller;
    $('#nav').hidden = false;
    $('#who').hidden = false;
    $('#who-label').textContent = c.kind === 'adminKey'
      ? 'Admin key “' + c.name + '”'
      : 'Token ' + c.prefix + '… (' + c.role + (c.orgId ? ', org ' + c.orgId : ', owner ' + c.ownerId) + ')';
    for (const e of $$('[data-needs]')) e.hidden = !c[e.dataset.needs];
    // A tokens:self caller can only create tokens for its own owner id.
    const owner = $('#c-owner');
    if (c.kind === 'pat' && c.role === 'tokens:self') {
      owner.value = c.ownerId;
      owner.readOnly = true;
    } else {
      owner.readOnly = false;
    }
  }

  function signOut(msg) {
    sessionStorage.removeItem(CRED_KEY);
    state.caller = null;
    state.items = [];
    state.token = null;
    for (const d of $$('dialog')) closeDialog(d);
    $('#nav').hidden = true;
    $('#who').hidden = true;
    $('#signin-error').textContent = msg || '';
    if (location.hash !== '#/signin') location.hash = '#/signin';
    else route();
  }

  // ---- views ---------------------------------------------------------------

  function show(view) {
    for (const v of $$('.view')) v.hidden = v.id !== 'view-' + view;
    for (const a of $$('[data-nav]')) {
      if (a.dataset.nav === view || (view === 'token' && a.dataset.nav === 'tokens')) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
  }

  async function route() {
    const hash = location.hash || '#/tokens';
    if (!state.caller) {
      show('signin');
      $('#signin-cred').focus();
      return;
    }
    const parts = hash.slice(2).split('/');
    try {
      if (parts[0] === 'tokens' && parts[1]) {
        show('token');
        await loadToken(decodeURIComponent(parts[1]));
      } else if (parts[0] === 'owners' && state.caller.canManageOwners) {
        show('owners');
      } else if (parts[0] === 'audit' && state.caller.canAudit) {
        show('audit');
        await loadAudit(true);
      } else {
        show('tokens');
        if (parts[0] !== 'tokens') {
          history.replaceState(null, '', '#/tokens');
        }
        await loadList();
      }
    } catch (e) {
      if (state.caller) notice(e.message, 'error');
    }
  }

  // ---- token list ----------------------------------------------------------

  function readFilters() {
    const f = $('#filters');
    const out = {};
    for (const name of ['q', 'ownerId', 'orgId', 'projectId', 'type', 'active', 'expiringWithinDays']) {
      const v = f.elements[name].value.trim();
      if (v) out[name] = v;
    }
    return out;
  }

  async function loadList(cursor) {
    const params = new URLSearchParams(state.filters);
    params.set('limit', '50');
    if (cursor) params.set('cursor', cursor);
    const page = await api('GET', '/v1/tokens?' + params.toString());
    state.items = page.items;
    state.nextCursor = page.nextCursor;
    renderList();
  }

  function renderList() {
    let items = state.items.slice();
    if ($('#f-sort').value === 'lastUsed') {
      items.sort((a, b) => (Date.parse(b.lastUsedAt) || 0) - (Date.parse(a.lastUsedAt) || 0));
    }
    const body = $('#token-table tbody');
    body.replaceChildren(...items.map((r) => el('tr', { 'data-id': r.id },
      el('td', {}, el('a', { href: '#/tokens/' + enc(r.id), text: r.name })),
      el('td', {}, el('code', { text: r.prefix })),
      el('td', { text: r.type }),
      el('td', { class: 'wrap', text: [r.ownerId, r.orgId || '—', r.projectId || '—'].join(' / ') }),
      el('td', { class: 'wrap', text: list(r.scopes) }),
      el('td', {}, badge(r)),
      el('td', { text: fmtTime(r.createdAt, true) }),
      el('td', { text: fmtTime(r.lastUsedAt, true) }),
      el('td', { text: r.expiresAt ? fmtTime(r.expiresAt, true) : 'never' }),
      el('td', { class: 'num', text: String(r.usageCount) }),
    )));
    $('#list-empty').hidden = items.length > 0;
    $('#page-next').disabled = !state.nextCursor;
    $('#page-first').disabled = state.cursors.length === 0;
  }

  // ---- create --------------------------------------------------------------

  function createBody(form) {
    clearErrors(form);
    const v = (n) => form.elements[n].value;
    const body = { name: v('name'), type: v('type'), ownerId: v('ownerId').trim() };
    let ok = true;
    const fail = (field, msg) => { fieldError(form, field, msg); ok = false; };
    let m = checkName(body.name);
    if (m) fail('name', m);
    if (v('description')) {
      body.description = v('description');
      m = checkDescription(body.description);
      if (m) fail('description', m);
    }
    if (!body.ownerId) fail('ownerId', 'is required');
    else if ((m = checkIdField(body.ownerId))) fail('ownerId', m);
    for (const f of ['orgId', 'projectId']) {
      const x = v(f).trim();
      if (x) {
        body[f] = x;
        if ((m = checkIdField(x))) fail(f, m);
      }
    }
    if (body.type === 'project' && !body.projectId) fail('projectId', 'required for project tokens');
    if (body.type === 'organization' && !body.orgId) fail('orgId', 'required for organization tokens');
    for (const f of ['scopes', 'permissions']) {
      const items = splitList(v(f));
      if ((m = checkList(items))) fail(f, m);
      body[f] = items;
    }
    const expiry = v('expiry');
    if (expiry === 'never') body.expiresAt = null;
    if (expiry === 'days') {
      const d = Number(v('expiresInDays'));
      if (!Number.isInteger(d) || d < 1 || d > 36500) fail('expiresInDays', 'must be 1-36500');
      else body.expiresInDays = d;
    }
    const ips = splitList(v('ipAllowlist'));
    if ((m = checkIps(ips))) fail('ipAllowlist', m);
    if (ips.length) body.ipAllowlist = ips;
    const rate = parseRate(v('rateLimit'));
    if (rate.error) fail('rateLimit', rate.error);
    else if (rate.value) body.rateLimit = rate.value;
    const meta = parseMetadata(v('metadata'));
    if (meta.error) fail('metadata', meta.error);
    else if (meta.value) body.metadata = meta.value;
    return ok ? body : null;
  }

  async function submitCreate(ev) {
    ev.preventDefault();
    const form = ev.target;
    const body = createBody(form);
    if (!body) { focusFirstInvalid(form); return; }
    let res;
    try {
      res = await api('POST', '/v1/tokens', body);
    } catch (e) {
      fieldError(form, e.field || '_form', e.field ? e.message.replace(e.field + ': ', '') : e.message);
      focusFirstInvalid(form);
      return;
    }
    closeDialog($('#dlg-create'));
    form.reset();
    applyCaller();
    $('#c-days').disabled = true;
    showSecret(res.token, 'Copy your new token “' + res.record.name + '”');
    res.token = null;
    await loadList(state.cursors[state.cursors.length - 1]);
  }

  // ---- token page ----------------------------------------------------------

  async function loadToken(id) {
    const r = await api('GET', '/v1/tokens/' + enc(id));
    state.token = r;
    renderToken();
    // The chart, client IPs, quota and audit events load after the record; a failure
    // shows in place. Nothing of the previously shown token stays meanwhile.
    $('#t-ips').replaceChildren();
    $('#t-ips-badge').replaceChildren();
    $('#t-ips-hint').textContent = '';
    $('#t-quota-card').hidden = true;
    loadUsage(id).catch((e) => { $('#t-chart').replaceChildren(el('p', { class: 'hint', text: 'Usage unavailable: ' + e.message })); });
    loadIps(id).catch((e) => {
      $('#t-ips-badge').replaceChildren();
      $('#t-ips').replaceChildren(el('tr', {}, el('td', { colspan: '4', text: 'Client IPs unavailable: ' + e.message })));
    });
    loadQuota(id).catch((e) => {
      $('#t-quota-card').hidden = false;
      $('#t-quota').replaceChildren(el('p', { class: 'hint', text: 'Quota unavailable: ' + e.message }));
    });
    if (state.caller.canAudit) {
      loadTokenAudit(id).catch((e) => { $('#t-audit').replaceChildren(el('tr', {}, el('td', { colspan: '5', text: e.message }))); });
    }
  }

  function toLocalInput(iso) {
    // datetime-local in UTC: "YYYY-MM-DDTHH:MM".
    return iso ? new Date(iso).toISOString().slice(0, 16) : '';
  }

  function renderToken() {
    const r = state.token;
    $('#token-h').textContent = r.name;
    $('#token-status').replaceChildren(badge(r));
    const rows = [
      ['Id', r.id], ['Prefix', r.prefix], ['Type', r.type], ['Owner', r.ownerId],
      ['Organization', r.orgId || '—'], ['Project', r.projectId || '—'],
      ['Scopes', list(r.scopes)], ['Permissions', list(r.permissions)],
      ['Created', fmtTime(r.createdAt) + (r.createdBy ? ' by ' + r.createdBy : '')],
      ['Last used', fmtTime(r.lastUsedAt)], ['Uses', String(r.usageCount)],
      ['Expires', r.expiresAt ? fmtTime(r.expiresAt) : 'never'],
      ['Revoked', fmtTime(r.revokedAt)],
      ['IP allowlist', list(r.ipAllowlist)],
      ['Rate limit', r.rateLimit ? r.rateLimit.requests + ' per ' + r.rateLimit.perSeconds + ' s' + (r.rateLimit.burst ? ', burst ' + r.rateLimit.burst : '') : 'default'],
      ['Description', r.description || '—'],
    ];
    $('#t-details').replaceChildren(...rows.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })]));
    const f = $('#edit-form');
    clearErrors(f);
    f.elements.name.value = r.name;
    f.elements.description.value = r.description || '';
    f.elements.scopes.value = r.scopes.join(', ');
    f.elements.permissions.value = r.permissions.join(', ');
    f.elements.expiresAt.value = toLocalInput(r.expiresAt);
    f.elements.ipAllowlist.value = (r.ipAllowlist || []).join(', ');
    f.elements.rateLimit.value = rateText(r.rateLimit);
    const revoked = !!r.revokedAt;
    $('#t-toggle').textContent = r.isActive ? 'Deactivate' : 'Activate';
    $('#t-toggle').disabled = revoked;
    $('#t-regen').disabled = revoked;
    $('#t-revoke').disabled = revoked;
    for (const i of $$('input, textarea, button', f)) i.disabled = revoked;
  }

  async function submitEdit(ev) {
    ev.preventDefault();
    const f = ev.target;
    clearErrors(f);
    const r = state.token;
    const v = (n) => f.elements[n].value;
    const patch = {};
    let ok = true;
    const fail = (field, msg) => { fieldError(f, field, msg); ok = false; };
    let m;
    if (v('name') !== r.name) { patch.name = v('name'); if ((m = checkName(patch.name))) fail('name', m); }
    if (v('description') !== (r.description || '')) { patch.description = v('description'); if ((m = checkDescription(patch.description))) fail('description', m); }
    for (const k of ['scopes', 'permissions']) {
      const items = splitList(v(k));
      if (items.join(',') !== r[k].join(',')) { patch[k] = items; if ((m = checkList(items))) fail(k, m); }
    }
    const exp = v('expiresAt');
    if (exp !== toLocalInput(r.expiresAt)) {
      if (!exp) patch.expiresAt = null;
      else {
        const t = Date.parse(exp + ':00Z');
        if (isNaN(t)) fail('expiresAt', 'must be a date and time');
        else if (t <= Date.now()) fail('expiresAt', 'must be in the future');
        else patch.expiresAt = new Date(t).toISOString();
      }
    }
    const ips = splitList(v('ipAllowlist'));
    if (ips.join(',') !== (r.ipAllowlist || []).join(',')) { patch.ipAllowlist = ips; if ((m = checkIps(ips))) fail('ipAllowlist', m); }
    const rate = parseRate(v('rateLimit'));
    const oldRate = rateText(r.rateLimit);
    if (v('rateLimit').replace(/\s/g, '') !== oldRate) {
      if (rate.error) fail('rateLimit', rate.error);
      else patch.rateLimit = rate.value;
    }
    if (!ok) { focusFirstInvalid(f); return; }
    if (Object.keys(patch).length === 0) { notice('Nothing changed.'); return; }
    try {
      state.token = await api('PATCH', '/v1/tokens/' + enc(r.id), patch);
    } catch (e) {
      fieldError(f, e.field || '_form', e.field ? e.message.replace(e.field + ': ', '') : e.message);
      focusFirstInvalid(f);
      return;
    }
    renderToken();
    notice('Saved.');
    if (state.caller.canAudit) loadTokenAudit(r.id).catch(() => {});
  }

  async function tokenAction(path, done) {
    const r = state.token;
    try {
      const res = await api('POST', '/v1/tokens/' + enc(r.id) + '/' + path);
      state.token = res;
      renderToken();
      notice(done);
      if (state.caller.canAudit) loadTokenAudit(r.id).catch(() => {});
    } catch (e) {
      notice(e.message, 'error');
    }
  }

  let confirmAction = null;
  function confirmThen(title, text, label, action) {
    $('#confirm-h').textContent = title;
    $('#confirm-text').textContent = text;
    $('#confirm-ok').textContent = label;
    confirmAction = action;
    openDialog($('#dlg-confirm'));
    // Cancel is focused first: the safe choice is the default.
  }

  async function submitRegen(ev) {
    ev.preventDefault();
    const f = ev.target;
    clearErrors(f);
    const r = state.token;
    let res;
    try {
      res = await api('POST', '/v1/tokens/' + enc(r.id) + '/regenerate', { gracePeriodSeconds: Number(f.elements.gracePeriodSeconds.value) });
    } catch (e) {
      fieldError(f, '_form', e.message);
      return;
    }
    closeDialog($('#dlg-regen'));
    state.token = res.record;
    renderToken();
    showSecret(res.token, 'Copy the regenerated token “' + res.record.name + '”');
    res.token = null;
    if (state.caller.canAudit) loadTokenAudit(r.id).catch(() => {});
  }

  // ---- usage chart (inline SVG) --------------------------------------------

  async function loadUsage(id) {
    const u = await api('GET', '/v1/tokens/' + enc(id) + '/usage');
    renderChart(u.hours);
  }

  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const c of children) e.append(c);
    return e;
  }

  function renderChart(hours) {
    const W = 840, H = 200, L = 40, B = 24, T = 10, R = 8;
    const max = Math.max(1, ...hours.map((h) => h.requests));
    const total = hours.reduce((a, h) => a + h.requests, 0);
    const bw = (W - L - R) / hours.length;
    const y = (n) => T + (H - T - B) * (1 - n / max);
    const g = svg('g', {});
    // Grid lines and labels at 0, max/2, max.
    for (const n of [0, Math.round(max / 2), max]) {
      g.append(svg('line', { x1: L, x2: W - R, y1: y(n), y2: y(n), class: 'grid' }));
      const t = svg('text', { x: L - 6, y: y(n) + 4, class: 'axis', 'text-anchor': 'end' });
      t.textContent = String(n);
      g.append(t);
    }
    hours.forEach((h, i) => {
      const x = L + i * bw;
      if (new Date(h.hour).getUTCHours() === 0) {
        g.append(svg('line', { x1: x, x2: x, y1: T, y2: H - B, class: 'day' }));
        const t = svg('text', { x: x + 2, y: H - 6, class: 'axis' });
        t.textContent = h.hour.slice(5, 10);
        g.append(t);
      }
      if (h.requests > 0) {
        const rect = svg('rect', { x: x + 0.5, y: y(h.requests), width: Math.max(1, bw - 1), height: H - B - y(h.requests), class: 'bar' });
        const title = svg('title', {});
        title.textContent = h.hour.replace('T', ' ').slice(0, 16) + ' UTC: ' + h.requests + ' requests';
        rect.append(title);
        g.append(rect);
      }
    });
    const chart = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, class: 'chart-svg', 'aria-hidden': 'true', focusable: 'false' }, g);
    $('#t-chart').replaceChildren(chart);
    $('#t-chart').setAttribute('aria-label', total + ' requests in the last 7 days; busiest hour ' + max);
    $('#t-chart-total').textContent = total + ' requests in the last 7 days (counts lag by up to a second).';
  }

  // ---- client IPs (key-sharing signals) --------------------------------------

  async function loadIps(id) {
    const r = await api('GET', '/v1/tokens/' + enc(id) + '/ips');
    // Another token's page may be showing by now.
    if (state.token && state.token.id === id) renderIps(r);
  }

  function renderIps(r) {
    const days = r.windowDays + (r.windowDays === 1 ? ' day' : ' days');
    $('#ips-h').textContent = 'Client IPs (' + days + ')';
    const badge = $('#t-ips-badge');
    if (r.distinct > r.warnAbove) {
      badge.replaceChildren(el('span', {
        class: 'badge st-warn', id: 't-ips-warning',
        text: '⚠ used from ' + r.distinct + ' networks: shared key?',
        title: 'More than ' + r.warnAbove + ' distinct client prefixes in the last ' + days,
      }));
    } else {
      badge.replaceChildren();
    }
    const rows = r.items.map((s) => el('tr', {},
      el('td', {}, el('code', { text: s.prefix })),
      el('td', { class: 'num', text: String(s.count) }),
      el('td', { text: fmtTime(s.firstSeenAt, true) }),
      el('td', { text: fmtTime(s.lastSeenAt, true) }),
    ));
    if (!rows.length) {
      rows.push(el('tr', {}, el('td', { colspan: '4', text: 'No requests in the last ' + days + '.' })));
    }
    $('#t-ips').replaceChildren(...rows);
    $('#t-ips-hint').textContent = r.enabled
      ? r.distinct + (r.distinct === 1 ? ' distinct prefix' : ' distinct prefixes') +
        '; IPv4 grouped by /' + r.ipv4Prefix + ', IPv6 by /' + r.ipv6Prefix +
        '. Counts lag by up to a second.'
      : 'Client-IP recording is off (client_ip.signals.enabled: false).';
  }

  // ---- quota ---------------------------------------------------------------

  async function loadQuota(id) {
    const r = await api('GET', '/v1/tokens/' + enc(id) + '/quota');
    if (state.token && state.token.id === id) renderQuota(r.quota, state.token.ownerId);
  }

  function fmtDuration(secs) {
    const d = Math.floor(secs / 86400), h = Math.floor((secs % 86400) / 3600), m = Math.floor((secs % 3600) / 60);
    if (d > 0) return d + ' d ' + h + ' h';
    if (h > 0) return h + ' h ' + m + ' min';
    return Math.max(1, m) + ' min';
  }

  function renderQuota(q, ownerId) {
    const card = $('#t-quota-card');
    card.hidden = !q;
    if (!q) return;
    const per = q.per === 'owner' ? 'shared by every token of owner ' + ownerId : 'this token\'s own';
    const meter = el('meter', {
      id: 't-quota-meter', min: '0', max: String(q.limit), value: String(Math.min(q.used, q.limit)),
      low: String(Math.floor(q.limit * 0.8)), high: String(Math.floor(q.limit * 0.95)), optimum: '0',
      'aria-labelledby': 'quota-h',
    });
    $('#t-quota').replaceChildren(
      el('p', { class: 'quota-figures' },
        el('strong', { id: 't-quota-used', text: q.used + ' / ' + q.limit }),
        ' requests ' + (q.period === 'day' ? 'today (UTC)' : 'this month (UTC)') +
        ' (' + q.remaining + ' remaining; ' + per + ')'),
      meter,
      el('p', { class: 'hint', text: 'Resets ' + fmtTime(q.resetAt) + ' (in ' + fmtDuration(q.resetSeconds) + ').' }),
    );
  }

  // ---- audit ---------------------------------------------------------------

  function auditRow(e, withToken) {
    return el('tr', {},
      el('td', { text: fmtTime(e.time) }),
      el('td', { text: e.action }),
      withToken ? el('td', {}, e.tokenId ? el('a', { href: '#/tokens/' + enc(e.tokenId), text: e.tokenId }) : '—') : null,
      el('td', { text: e.actor }),
      el('td', { text: e.outcome }),
      el('td', { text: e.sourceIp || '—' }),
    );
  }

  async function loadTokenAudit(id) {
    const page = await api('GET', '/v1/audit?limit=50&tokenId=' + enc(id));
    $('#t-audit').replaceChildren(...page.items.map((e) => auditRow(e, false)));
  }

  async function loadAudit(first) {
    if (first) state.auditCursor = null;
    const q = new URLSearchParams({ limit: '50' });
    if (state.auditCursor) q.set('cursor', state.auditCursor);
    const page = await api('GET', '/v1/audit?' + q.toString());
    const rows = page.items.map((e) => auditRow(e, true));
    if (first) $('#audit-rows').replaceChildren(...rows);
    else $('#audit-rows').append(...rows);
    state.auditCursor = page.nextCursor;
    $('#audit-next').disabled = !page.nextCursor;
  }

  // ---- owners --------------------------------------------------------------

  function ownerId() {
    const f = $('#owner-form');
    clearErrors(f);
    const v = f.elements.ownerId.value.trim();
    const m = v ? checkIdField(v) : 'is required';
    if (m) { fieldError(f, 'ownerId', m); focusFirstInvalid(f); return null; }
    return v;
  }

  async function setOwner(id, disabled) {
    try {
      await api('POST', '/v1/owners/' + enc(id) + (disabled ? '/disable' : '/enable'));
      notice('Owner ' + id + (disabled ? ' disabled: every token of theirs now fails.' : ' enabled.'));
    } catch (e) {
      notice(e.message, 'error');
    }
  }

  // ---- wiring --------------------------------------------------------------

  function wire() {
    $('#signin-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const input = $('#signin-cred');
      const cred = input.value.trim();
      $('#signin-error').textContent = '';
      if (!cred) { $('#signin-error').textContent = 'Enter an admin key or a token.'; input.focus(); return; }
      try {
        await signIn(cred);
      } catch (e) {
        $('#signin-error').textContent = e.status === 401 ? 'Not accepted: ' + e.message : e.message;
        input.focus();
        return;
      }
      input.value = '';
      if (!location.hash || location.hash === '#/signin') location.hash = '#/tokens';
      else route();
    });
    $('#signout').addEventListener('click', () => signOut('Signed out.'));

    $('#filters').addEventListener('submit', (ev) => {
      ev.preventDefault();
      state.filters = readFilters();
      state.cursors = [];
      loadList().catch((e) => notice(e.message, 'error'));
    });
    $('#f-sort').addEventListener('change', renderList);
    $('#f-reset').addEventListener('click', () => {
      $('#filters').reset();
      state.filters = {};
      state.cursors = [];
      loadList().catch((e) => notice(e.message, 'error'));
    });
    $('#page-next').addEventListener('click', () => {
      if (!state.nextCursor) return;
      state.cursors.push(state.nextCursor);
      loadList(state.nextCursor).catch((e) => notice(e.message, 'error'));
    });
    $('#page-first').addEventListener('click', () => {
      state.cursors = [];
      loadList().catch((e) => notice(e.message, 'error'));
    });

    $('#new-token').addEventListener('click', () => {
      clearErrors($('#create-form'));
      openDialog($('#dlg-create'));
    });
    $('#c-expiry').addEventListener('change', (ev) => {
      const days = $('#c-days');
      days.disabled = ev.target.value !== 'days';
      if (!days.disabled && !days.value) days.value = '90';
    });
    $('#create-form').addEventListener('submit', submitCreate);
    $('#secret-copy').addEventListener('click', copySecret);

    $('#edit-form').addEventListener('submit', submitEdit);
    $('#t-toggle').addEventListener('click', () => {
      const active = state.token.isActive;
      tokenAction(active ? 'deactivate' : 'activate', active ? 'Deactivated.' : 'Activated.');
    });
    $('#t-revoke').addEventListener('click', () => confirmThen('Revoke this token?',
      'Revoking “' + state.token.name + '” is permanent: its next request gets “PAT has been revoked”.',
      'Revoke', () => tokenAction('revoke', 'Revoked.')));
    $('#t-delete').addEventListener('click', () => confirmThen('Delete this token?',
      'Deleting “' + state.token.name + '” removes its record permanently; the token stops working.',
      'Delete', async () => {
        try {
          await api('DELETE', '/v1/tokens/' + enc(state.token.id));
          notice('Deleted.');
          location.hash = '#/tokens';
        } catch (e) { notice(e.message, 'error'); }
      }));
    $('#t-regen').addEventListener('click', () => {
      clearErrors($('#regen-form'));
      openDialog($('#dlg-regen'));
    });
    $('#regen-form').addEventListener('submit', submitRegen);
    $('#confirm-ok').addEventListener('click', () => {
      const a = confirmAction;
      confirmAction = null;
      closeDialog($('#dlg-confirm'));
      if (a) a();
    });

    $('#owner-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const id = ownerId();
      if (!id) return;
      $('#filters').reset();
      $('#f-owner').value = id;
      state.filters = { ownerId: id };
      state.cursors = [];
      location.hash = '#/tokens';
    });
    $('#o-disable').addEventListener('click', () => {
      const id = ownerId();
      if (id) confirmThen('Disable this owner?', 'Every token of owner “' + id + '” will fail with “PAT is inactive” until enabled again.', 'Disable', () => setOwner(id, true));
    });
    $('#o-enable').addEventListener('click', () => { const id = ownerId(); if (id) setOwner(id, false); });
    $('#audit-next').addEventListener('click', () => loadAudit(false).catch((e) => notice(e.message, 'error')));

    for (const d of $$('dialog')) {
      // Escape: close through closeDialog; a close by any other path wipes too.
      d.addEventListener('cancel', (ev) => { ev.preventDefault(); closeDialog(d); });
      d.addEventListener('close', () => { if (d.id === 'dlg-secret') wipeSecret(); });
      for (const b of $$('[data-close]', d)) b.addEventListener('click', () => closeDialog(d));
    }
    window.addEventListener('hashchange', route);
  }

  async function start() {
    wire();
    if (credential()) {
      try {
        state.caller = await api('GET', '/v1/caller');
        applyCaller();
      } catch (e) {
        sessionStorage.removeItem(CRED_KEY);
        $('#signin-error').textContent = 'Sign in again: ' + e.message;
      }
    }
    route();
  }

  document.addEventListener('DOMContentLoaded', start);
})();

/*
 * tiktok-gateway collector: a drop-in for TikTok's base code.
 *
 * The page keeps TikTok's snippet and only loads this script instead of
 * analytics.tiktok.com/i18n/pixel/events.js; ttq.load(PIXEL) appends ?sdkid=PIXEL&lib=ttq.
 *   replace mode (default): no TikTok script; every call goes to the gateway's POST /e.
 *   mirror mode (c.js?mode=mirror): the real pixel loads too, from the gateway's /tt/ proxy
 *     (or from TikTok with &pixel=tiktok); each track gets an event_id before the pixel sees it
 *     and the same event goes to the gateway, so TikTok deduplicates the pair.
 */
(function (w, d) {
  const name = w.TiktokAnalyticsObject || 'ttq';
  const ttq = (w[name] = w[name] || []);
  if (ttq._ttgw) return; // a second ttq.load() injects this script again
  ttq._ttgw = 1;

  const src = (d.currentScript && d.currentScript.src) || '';
  const base = src.slice(0, src.indexOf('/c.js'));
  // ttq.load appends "?sdkid=…" even when the URL already has a query: read both
  const params = new URLSearchParams(src.slice(src.indexOf('?') + 1).replace(/\?/g, '&'));
  const mirror = params.get('mode') === 'mirror';
  const pixel = params.get('sdkid');
  // TikTok's snippet lists its methods (page, track, identify, the consent trio, no-ops...)
  const METHODS = ttq.methods || ['page', 'track', 'identify', 'holdConsent', 'revokeConsent',
    'grantConsent'];

  let queue = [];
  let user = {};
  let held = false;
  let revoked = false;
  let timer = 0;
  let lastUrl = location.href;

  const randomId = () => (w.crypto && crypto.randomUUID ? crypto.randomUUID()
    : Date.now() + '.' + Math.random().toString(36).slice(2));

  // Google Consent Mode v2: the latest gtag('consent', 'default'|'update', {...}) in dataLayer
  function consent() {
    const state = {};
    (w.dataLayer || []).forEach((entry) => {
      if (entry && entry[0] === 'consent' && entry[2]) {
        for (const key in entry[2]) if (/^(ad_|analytics_s)/.test(key)) state[key] = entry[2][key];
      }
    });
    return state;
  }

  // text/plain keeps it a "simple" CORS request: no preflight
  function post(body, retried) {
    fetch(base + '/e', {
      method: 'POST',
      body,
      credentials: 'include',
      keepalive: true,
      headers: { 'Content-Type': 'text/plain' },
    }).catch(() => { if (!retried) setTimeout(() => post(body, 1), 1000); });
  }

  function flush(leaving) {
    clearTimeout(timer);
    timer = 0;
    while (!held && !revoked && queue.length) {
      const body = JSON.stringify({ events: queue.splice(0, 20) });
      if (!(leaving && navigator.sendBeacon
        && navigator.sendBeacon(base + '/e', new Blob([body], { type: 'text/plain' })))) post(body);
    }
  }

  function push(event) {
    if (revoked) return;
    event.timestamp = Date.now();
    event.page = { url: location.href, referrer: d.referrer };
    const state = consent();
    if (Object.keys(state).length) event.consent = state;
    if (Object.keys(user).length) event.user = Object.assign({}, user);
    queue.push(event);
    if (!timer) timer = setTimeout(flush, 50);
  }

  // The same event_id rule as the gateway: given, else ord_<order_id>, else random.
  function track(event, props, options) {
    props = props || {};
    options = options || {};
    if (options.event_id == null) {
      options.event_id = props.order_id != null ? 'ord_' + props.order_id : randomId();
    }
    options.event_id = String(options.event_id);
    push({ type: 'track', event, event_id: options.event_id, properties: props });
    return options;
  }

  const api = {
    // mirror: the pixel sends Pageview itself (without an id, so a server copy would double it);
    // the gateway still hears of the page, for the click in its URL and the cookies
    page: () => push({ type: mirror ? 'identify' : 'page' }),
    track,
    identify(data) {
      user = Object.assign(user, data);
      push({ type: 'identify' });
    },
    holdConsent() { held = true; },
    grantConsent() { held = false; flush(); },
    revokeConsent() { revoked = true; queue = []; },
    ready(callback) { if (typeof callback === 'function') callback(); },
  };

  function call(args) {
    const method = api[args[0]];
    if (method) method.apply(0, args.slice(1));
  }

  const pending = ttq.slice();
  Object.keys(ttq._i || {}).forEach((id) => pending.push(...(ttq._i[id] || [])));
  // track fills in the options object the pixel will read from the same queue entry
  pending.forEach((args) => {
    if (args[0] === 'track') args[3] = track(args[1], args[2], args[3]);
    else call(args);
  });

  // ours first, then the pixel's own method (its stub before it loads, its code after)
  const both = (target, method, impl) => (...args) => {
    if (method === 'track') args[2] = track(args[0], args[1], args[2]);
    else if (api[method]) api[method].apply(0, args);
    return impl && impl.apply(target, args);
  };

  if (mirror) {
    METHODS.concat('instance').forEach((method) => {
      let impl = ttq[method];
      Object.defineProperty(ttq, method, {
        configurable: true,
        get: () => (method !== 'instance' ? both(ttq, method, impl) : (id) => {
          const real = impl.call(ttq, id);
          const wrapped = {};
          METHODS.forEach((m) => { wrapped[m] = both(real, m, real[m]); });
          return wrapped;
        }),
        set: (value) => { impl = value; },
      });
    });
    const script = d.createElement('script');
    script.async = true;
    script.src = (params.get('pixel') === 'tiktok' ? 'https://analytics.tiktok.com' : base + '/tt')
      + '/i18n/pixel/events.js?sdkid=' + pixel + '&lib=' + name;
    d.head.appendChild(script);
  } else {
    ttq.length = 0;
    METHODS.forEach((method) => { ttq[method] = (...args) => call([method, ...args]); });
    ttq.load = () => {};
    ttq.instance = () => ttq;
  }

  // single-page apps: one page event per new URL
  function changed() {
    if (location.href !== lastUrl) {
      lastUrl = location.href;
      api.page();
    }
  }
  ['pushState', 'replaceState'].forEach((method) => {
    const original = history[method];
    history[method] = function () {
      const result = original.apply(this, arguments);
      changed();
      return result;
    };
  });
  w.addEventListener('popstate', changed);
  w.addEventListener('pagehide', () => flush(1));
  d.addEventListener('visibilitychange', () => { if (d.visibilityState === 'hidden') flush(1); });
})(window, document);

/*
 * tiktok-gateway on Shopify: names the visitor in the cart, for the order webhook and the pixel.
 * Load it beside c.js: <script src="https://t.shop.example/c-shopify.js" async></script>
 * POST /e answers with the browser's own signed visitor ("visitor"); it goes into the cart's
 * attributes as _ttgw_visitor (the order's note_attributes then name the visitor) whenever the
 * visitor or the cart changed, and into localStorage for the Custom Pixel, which cannot read the
 * HttpOnly _ttgw cookie.
 */
(function (w, d) {
  if (!w.Shopify) return;
  const src = (d.currentScript && d.currentScript.src) || '';
  const base = src.slice(0, src.indexOf('/c-shopify.js'));
  const root = (w.Shopify.routes && w.Shopify.routes.root) || '/';
  const KEY = '_ttgw_visitor';
  const cart = () => (d.cookie.match(/(?:^|;\s*)cart=([^;]*)/) || [])[1] || '';
  fetch(base + '/e', {
    method: 'POST',
    credentials: 'include',
    headers: { 'Content-Type': 'text/plain' },
    body: JSON.stringify({ events: [{ type: 'identify' }] }),
  }).then((r) => r.json()).then((answer) => {
    const visitor = answer.visitor;
    const store = w.localStorage;
    if (!visitor || (store.getItem(KEY) === visitor && cart()
      && store.getItem('_ttgw_cart') === cart())) return;
    store.setItem(KEY, visitor);
    return fetch(root + 'cart/update.js', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ attributes: { [KEY]: visitor } }),
    }).then((r) => { if (r.ok) store.setItem('_ttgw_cart', cart()); });
  }).catch(() => {});
})(window, document);

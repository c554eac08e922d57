// The card step of a page for people (webhook/pages.py): Stripe.js takes the card; the service
// confirms it; the outcome shown is the service's, polled from the page's own status address.
(function () {
  'use strict';
  var form = document.getElementById('card-form');
  if (!form) { return; }
  var data = form.dataset;
  var button = form.querySelector('button');
  var errorBox = document.getElementById('error');
  var outcome = document.getElementById('outcome');
  var stripe = Stripe(data.publishableKey);
  // No card to take when the member only authenticates a charge to their saved card.
  var card = null;
  if (document.getElementById('card')) {
    card = stripe.elements().create('card');
    card.mount('#card');
  }

  function fail(message) {
    errorBox.textContent = message || 'The card could not be used.';
    button.disabled = false;
  }

  function post(url, body) {
    return fetch(url, {method: 'POST', headers: {'Content-Type': 'application/json'},
                       body: JSON.stringify(body), credentials: 'same-origin'})
      .then(function (response) { return response.json(); });
  }

  function show(answer) {
    outcome.textContent = answer.message;
    outcome.dataset.status = answer.status;
  }

  // Until the service says the request is paid, declined or failed (money is booked from
  // Stripe's own report, a second or two after the card is taken).
  function poll() {
    fetch(data.statusUrl, {credentials: 'same-origin'})
      .then(function (response) { return response.json(); })
      .then(function (answer) {
        if (answer.error) { fail(answer.error.message); return; }
        show(answer);
        if (answer.final) { form.hidden = true; } else { setTimeout(poll, 1000); }
      })
      .catch(function () { setTimeout(poll, 2000); });
  }

  async function payCheckout() {
    var made = await stripe.createToken(card);
    if (made.error) { return fail(made.error.message); }
    var answer = await post(data.cardUrl, {card_token: made.token.id});
    if (answer.error) { return fail(answer.error.message); }
    if (answer.status === 'declined') { return fail(answer.message); }
    if (answer.status === 'requires_action') {
      var done = await stripe.confirmCardPayment(answer.client_secret);
      if (done.error) { return fail(done.error.message); }
    }
    outcome.textContent = 'Card accepted; confirming…';
    poll();
  }

  async function saveCard() {
    var saved = await stripe.confirmCardSetup(data.clientSecret, {payment_method: {card: card}});
    if (saved.error) { return fail(saved.error.message); }
    var answer = await post(data.savedUrl, {});
    if (answer.error) { return fail(answer.error.message); }
    outcome.textContent = 'Card saved; turning auto top-up on…';
    poll();
  }

  // Stripe's off-session refusal leaves the card on the intent's last error: name it again.
  async function authenticate() {
    var extra = data.paymentMethod ? {payment_method: data.paymentMethod} : undefined;
    var done = await stripe.confirmCardPayment(data.clientSecret, extra);
    if (done.error) { return fail(done.error.message); }
    outcome.textContent = 'Confirmed with your bank; waiting for the top-up…';
    poll();
  }

  form.addEventListener('submit', function (event) {
    event.preventDefault();
    button.disabled = true;
    errorBox.textContent = '';
    var step = {setup: saveCard, authenticate: authenticate}[data.action] || payCheckout;
    step().catch(function (err) { fail(err && err.message); });
  });
}());

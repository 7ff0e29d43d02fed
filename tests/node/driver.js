// Drives real pusher-js clients for the end-to-end tests.
//
// Reads one JSON command per line on stdin, writes one JSON report per line on stdout:
//   {"cmd":"connect","id":"a","key":"...","options":{...}}  -> {"id","type":"connected","socket_id"}
//   {"cmd":"subscribe","id":"a","channel":"c"}             -> {"id","type":"subscribed","channel"}
//   {"cmd":"subscribe_many","prefix":"s","count":100,"key":"...","options":{...},"channel":"c"}
//        connects `count` clients named prefix0..prefixN-1, subscribes each, reports
//        {"type":"all_subscribed","count"} once every one is subscribed
//   {"cmd":"unsubscribe","id":"a","channel":"c"}, {"cmd":"disconnect","id":"a"}
// Every event received is reported as {"id","type":"event","channel","event","data"}; data
// over 1 KiB is reported as {"sha256","length"} instead, so big payloads are compared exactly.
// Connection errors (close codes included) are {"id","type":"error","code","message"}.
'use strict';
const crypto = require('crypto');
const readline = require('readline');
const Pusher = require('pusher-js');

const clients = new Map();

function report(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function describeData(data) {
  const text = typeof data === 'string' ? data : JSON.stringify(data);
  if (text.length <= 1024) return { data };
  return {
    sha256: crypto.createHash('sha256').update(text, 'utf8').digest('hex'),
    length: Buffer.byteLength(text, 'utf8'),
  };
}

function connect(id, key, options, onConnected) {
  const pusher = new Pusher(key, options);
  clients.set(id, pusher);
  pusher.connection.bind('connected', () => {
    report({ id, type: 'connected', socket_id: pusher.connection.socket_id });
    if (onConnected) onConnected();
  });
  pusher.connection.bind('state_change', (s) => report({ id, type: 'state', previous: s.previous, current: s.current }));
  pusher.connection.bind('error', (err) => {
    const data = (err && err.data) || (err && err.error && err.error.data) || {};
    report({ id, type: 'error', code: data.code === undefined ? null : data.code, message: data.message || String(err && err.type) });
  });
  return pusher;
}

function subscribe(id, channelName, onSubscribed) {
  const pusher = clients.get(id);
  const channel = pusher.subscribe(channelName);
  channel.bind('pusher:subscription_succeeded', () => {
    report({ id, type: 'subscribed', channel: channelName });
    if (onSubscribed) onSubscribed();
  });
  channel.bind('pusher:subscription_error', (status) => report({ id, type: 'subscription_error', channel: channelName, status }));
  channel.bind_global((event, data) => {
    if (event.startsWith('pusher:') || event.startsWith('pusher_internal:')) return;
    report({ id, type: 'event', channel: channelName, event, ...describeData(data) });
  });
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  switch (cmd.cmd) {
    case 'connect':
      connect(cmd.id, cmd.key, cmd.options);
      break;
    case 'subscribe':
      subscribe(cmd.id, cmd.channel);
      break;
    case 'subscribe_many': {
      let pending = cmd.count;
      for (let i = 0; i < cmd.count; i++) {
        const id = `${cmd.prefix}${i}`;
        connect(id, cmd.key, cmd.options, () => {
          subscribe(id, cmd.channel, () => {
            pending -= 1;
            if (pending === 0) report({ type: 'all_subscribed', count: cmd.count });
          });
        });
      }
      break;
    }
    case 'unsubscribe':
      clients.get(cmd.id).unsubscribe(cmd.channel);
      report({ id: cmd.id, type: 'unsubscribed', channel: cmd.channel });
      break;
    case 'disconnect':
      clients.get(cmd.id).disconnect();
      break;
    case 'exit':
      for (const p of clients.values()) p.disconnect();
      process.exit(0);
      break;
    default:
      report({ type: 'bad_command', cmd });
  }
});
rl.on('close', () => process.exit(0));
report({ type: 'ready', pusher_js: require('pusher-js/package.json').version });

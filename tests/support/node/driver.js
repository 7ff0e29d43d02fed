// Drives real pusher-js clients for the end-to-end tests.
//
// Reads one JSON command per line on stdin, writes one JSON report per line on stdout:
//   {"cmd":"connect","id":"a","key":"...","options":{...}}  -> {"id","type":"connected","socket_id"}
//   {"cmd":"subscribe","id":"a","channel":"c"}             -> {"id","type":"subscribed","channel"}
//   {"cmd":"subscribe_many","prefix":"s","count":100,"key":"...","options":{...},"channel":"c"}
//        connects `count` clients named prefix0..prefixN-1, subscribes each, reports
//        {"type":"all_subscribed","count"} once every one is subscribed
//   {"cmd":"unsubscribe","id":"a","channel":"c"}, {"cmd":"disconnect","id":"a"}
//   {"cmd":"trigger","id":"a","channel":"c","event":"client-x","data":{...}}
//        -> {"id","type":"triggered","channel","event","ok"} (or "trigger_failed" with "error")
//   {"cmd":"signin","id":"a"} -> pusher.signin(); {"id","type":"signin_success","user_data"}
// Every event received is reported as {"id","type":"event","channel","event","data"}; data
// over 1 KiB is reported as {"sha256","length"} instead, so big payloads are compared exactly.
// A frame carrying user_id (client events on presence channels) is also reported raw:
// {"id","type":"user_id","channel","event","user_id"}.
// Channels also report {"type":"subscription_error","status"}, {"type":"cache_miss"}, and on
// presence channels {"type":"subscribed",...,"members":{"me","ids","count"}},
// {"type":"member_added"|"member_removed","user_id","info"}. Events to the signed-in user:
// {"id","type":"user_event","event","data"}.
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
  pusher.connection.bind('message', (m) => {
    if (m.event === 'pusher:signin_success') {
      report({ id, type: 'signin_success', user_data: m.data.user_data });
    }
    if (m.user_id !== undefined) {
      report({ id, type: 'user_id', channel: m.channel, event: m.event, user_id: m.user_id });
    }
  });
  pusher.user.bind_global((event, data) => {
    if (event.startsWith('pusher:') || event.startsWith('pusher_internal:')) return;
    report({ id, type: 'user_event', event, ...describeData(data) });
  });
  return pusher;
}

function membersOf(channel) {
  const m = channel.members;
  return { me: m.me, ids: Object.keys(m.members).sort(), count: m.count };
}

function subscribe(id, channelName, onSubscribed) {
  const pusher = clients.get(id);
  const channel = pusher.subscribe(channelName);
  channel.bind('pusher:subscription_succeeded', () => {
    const subscribed = { id, type: 'subscribed', channel: channelName };
    if (channel.members) subscribed.members = membersOf(channel);
    report(subscribed);
    if (onSubscribed) onSubscribed();
  });
  channel.bind('pusher:subscription_error', (status) => report({ id, type: 'subscription_error', channel: channelName, status }));
  channel.bind('pusher:cache_miss', () => report({ id, type: 'cache_miss', channel: channelName }));
  if (channel.members) {
    channel.bind('pusher:member_added', (m) => report({ id, type: 'member_added', channel: channelName, user_id: m.id, info: m.info }));
    channel.bind('pusher:member_removed', (m) => report({ id, type: 'member_removed', channel: channelName, user_id: m.id }));
  }
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
    case 'trigger': {
      try {
        const ok = clients.get(cmd.id).channel(cmd.channel).trigger(cmd.event, cmd.data);
        report({ id: cmd.id, type: 'triggered', channel: cmd.channel, event: cmd.event, ok });
      } catch (e) {
        report({ id: cmd.id, type: 'trigger_failed', channel: cmd.channel, error: String(e) });
      }
      break;
    }
    case 'signin':
      clients.get(cmd.id).signin();
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

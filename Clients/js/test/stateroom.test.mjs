// StateroomSocket's logic against a scripted WebSocket: no server, no network.
// Run: node --test Clients/js/test/ (Node 20), or name the file (node --test Clients/js/test/stateroom.test.mjs):
// from Node 21 on, --test takes files and globs, not folders.
import { test, beforeEach, afterEach, mock } from 'node:test';
import assert from 'node:assert/strict';
import { StateroomSocket } from '../stateroom.js';

/** A WebSocket whose server side the test plays: open(), seat(), message(), drop(). */
class FakeWebSocket {
  static made = [];
  readyState = 0;
  bufferedAmount = 0;
  protocol = '';
  extensions = '';
  binaryType = 'blob';
  sent = [];
  closedWith = null;

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    FakeWebSocket.made.push(this);
  }

  send(data) {
    if (this.readyState !== 1) throw new Error(`send in state ${this.readyState}`);
    this.sent.push(data);
  }

  close(code, reason) {
    if (code !== undefined && code !== 1000 && (code < 3000 || code > 4999)) throw new Error('InvalidAccessError');
    this.closedWith = [code, reason];
    this.readyState = 2;
  }

  // the server's side
  open() { this.readyState = 1; this.onopen?.({ type: 'open' }); }
  message(data) { this.onmessage?.({ type: 'message', data, origin: 'ws://example.test' }); }
  seat(fields) { this.message(JSON.stringify({ type: 'seat', grace: 30, ...fields })); }
  drop(code = 1006, reason = '', wasClean = false) {
    this.readyState = 3;
    this.onclose?.({ type: 'close', code, reason, wasClean });
  }
  /** Opens and answers with a seat message. */
  accept(fields) { this.open(); this.seat(fields); }
}

const last = () => FakeWebSocket.made.at(-1);
const query = (ws) => Object.fromEntries(new URL(ws.url).searchParams);

/** A socket whose events are recorded as short strings in `log`. */
function socket(url = 'ws://example.test/ws/room', options = {}) {
  const s = new StateroomSocket(url, { WebSocket: FakeWebSocket, ...options });
  s.log = [];
  s.onopen = () => s.log.push('open');
  s.onmessage = (e) => s.log.push(`message ${e.data}`);
  s.onreconnect = (e) => s.log.push(`reconnect ${e.recovered}`);
  s.ondrop = (e) => s.log.push(`drop ${e.code}`);
  s.drops = [];
  s.addEventListener('drop', (e) => s.drops.push(e.attempt));
  s.onerror = () => s.log.push('error');
  s.onclose = (e) => s.log.push(`close ${e.code}`);
  return s;
}

/** A fake clock for setTimeout/clearTimeout: timers run only in tick(). */
const clock = {
  install() {
    this.now = 0;
    this.timers = [];
    this.saved = [globalThis.setTimeout, globalThis.clearTimeout];
    globalThis.setTimeout = (fn, ms) => { const t = { fn, at: this.now + ms }; this.timers.push(t); return t; };
    globalThis.clearTimeout = (t) => { this.timers = this.timers.filter((x) => x !== t); };
  },
  uninstall() { [globalThis.setTimeout, globalThis.clearTimeout] = this.saved; },
  tick(ms) {
    this.now += ms;
    for (let due; (due = this.timers.filter((t) => t.at <= this.now).sort((a, b) => a.at - b.at)[0]);) {
      this.timers = this.timers.filter((t) => t !== due);
      due.fn();
    }
  },
};

beforeEach(() => {
  FakeWebSocket.made = [];
  clock.install();
  mock.method(Math, 'random', () => 0.5);
});

afterEach(() => {
  clock.uninstall();
  mock.restoreAll();
});

test('the constants are WebSocket\'s, on the class and on instances', () => {
  const s = socket();
  for (const [name, value] of [['CONNECTING', 0], ['OPEN', 1], ['CLOSING', 2], ['CLOSED', 3]]) {
    assert.equal(StateroomSocket[name], value);
    assert.equal(s[name], value);
  }
});

test('the seat message is consumed: open once, then only service messages, counted', () => {
  const s = socket();
  assert.equal(s.readyState, StateroomSocket.CONNECTING);
  assert.equal(s.url, 'ws://example.test/ws/room');
  last().open();
  assert.equal(s.readyState, StateroomSocket.CONNECTING, 'open waits for the seat message');
  assert.deepEqual(s.log, []);
  last().seat({ seat: 'tok-1', client: 7, recovered: false });
  assert.equal(s.readyState, StateroomSocket.OPEN);
  assert.deepEqual([s.clientId, s.seat, s.recovered, s.received], [7, 'tok-1', false, 0]);
  last().message('new value: 1');
  last().message(JSON.stringify({ type: 'seat', seat: 'x', client: 9, recovered: true }));  // the service's
  last().message(new Uint8Array([1, 2]).buffer);
  assert.equal(s.received, 3);
  assert.equal(s.clientId, 7);
  assert.deepEqual(s.log, ['open', 'message new value: 1',
    'message {"type":"seat","seat":"x","client":9,"recovered":true}', 'message [object ArrayBuffer]']);
});

test('listeners and on-handlers both get the events; a message event has data', () => {
  const s = socket();
  const seen = [];
  const listener = (e) => seen.push(e.data);
  s.addEventListener('message', listener);
  last().accept({ seat: 't', client: 1, recovered: false });
  last().message('a');
  s.removeEventListener('message', listener);
  last().message('b');
  assert.deepEqual(seen, ['a']);
  assert.deepEqual(s.log, ['open', 'message a', 'message b']);
});

test('the first URL opts in beside the existing query; a resume names the token and the count', () => {
  const s = socket('ws://example.test/ws/lobby?token=abc.def');
  assert.equal(last().url, 'ws://example.test/ws/lobby?token=abc.def&seat=new');
  last().accept({ seat: 'Vb3k-_x', client: 4, recovered: false });
  for (const m of ['1', '2', '3']) last().message(m);
  last().drop();
  clock.tick(10000);
  assert.equal(last().url, 'ws://example.test/ws/lobby?token=abc.def&seat=Vb3k-_x&received=3');
  last().accept({ seat: 'Vb3k-_x', client: 4, recovered: true });
  last().message('4');
  last().drop();
  clock.tick(10000);
  assert.deepEqual(query(last()), { token: 'abc.def', seat: 'Vb3k-_x', received: '4' });
  assert.equal(s.readyState, StateroomSocket.CONNECTING);

  socket('ws://example.test/ws');
  assert.equal(last().url, 'ws://example.test/ws?seat=new');
});

test('a resume that recovers carries on counting; one that does not starts a new seat at 0', () => {
  const s = socket();
  last().accept({ seat: 'a', client: 1, recovered: false });
  last().message('x');
  last().message('y');
  last().drop();
  clock.tick(10000);
  last().accept({ seat: 'a', client: 1, recovered: true });
  assert.deepEqual([s.recovered, s.received, s.clientId], [true, 2, 1]);
  last().message('z');
  assert.equal(s.received, 3);
  last().drop();
  clock.tick(10000);
  assert.equal(query(last()).received, '3');
  last().accept({ seat: 'b', client: 5, recovered: false });
  assert.deepEqual([s.recovered, s.received, s.clientId, s.seat], [false, 0, 5, 'b']);
  last().message('w');
  last().drop();
  clock.tick(10000);
  assert.deepEqual(query(last()), { seat: 'b', received: '1' });
  assert.deepEqual(s.log, ['open', 'message x', 'message y', 'drop 1006', 'reconnect true', 'message z',
    'drop 1006', 'reconnect false', 'message w', 'drop 1006']);
});

test('the reconnect event says recovered, through a listener too', () => {
  const s = socket();
  const events = [];
  s.addEventListener('reconnect', (e) => events.push([e.type, e.recovered, e.clientId]));
  last().accept({ seat: 'a', client: 1, recovered: false });
  last().drop();
  clock.tick(10000);
  last().accept({ seat: 'a', client: 1, recovered: true });
  last().drop(1012, 'service restart', true);
  clock.tick(10000);
  last().accept({ seat: 'c', client: 2, recovered: false });
  assert.deepEqual(events, [['reconnect', true, 1], ['reconnect', false, 2]]);
  assert.equal(s.log.filter((l) => l === 'open').length, 1, 'open fires once');
});

test('without seats ("seat": null) it reconnects as a new client each time', () => {
  const s = socket();
  last().accept({ seat: null, client: 3, recovered: false });
  last().message('m');
  for (const client of [4, 5]) {
    last().drop();
    clock.tick(10000);
    assert.deepEqual(query(last()), { seat: 'new' });
    last().accept({ seat: null, client, recovered: false });
    assert.deepEqual([s.seat, s.clientId, s.recovered, s.received], [null, client, false, 0]);
  }
  assert.deepEqual(s.log, ['open', 'message m', 'drop 1006', 'reconnect false', 'drop 1006', 'reconnect false']);
});

test('a server that sends no seat message: its first message is delivered, no seat', () => {
  const s = socket();
  last().open();
  last().message('hello');
  assert.deepEqual([s.readyState, s.seat, s.clientId, s.received], [StateroomSocket.OPEN, null, null, 1]);
  assert.deepEqual(s.log, ['open', 'message hello']);
});

test('sends while connecting or reconnecting are queued and go first, in order, once seated', () => {
  const s = socket();
  s.send('q1');
  s.send('q2');
  assert.equal(s.bufferedAmount, 4);
  last().open();
  s.send('q3');  // connected, but no seat yet
  assert.deepEqual(last().sent, []);
  last().seat({ seat: 'a', client: 1, recovered: false });
  assert.deepEqual(last().sent, ['q1', 'q2', 'q3']);
  s.send('live');
  assert.deepEqual(last().sent, ['q1', 'q2', 'q3', 'live']);

  last().drop();
  s.send('r1');
  clock.tick(10000);
  s.send('r2');  // the new connection is not open yet
  const next = last();
  s.onreconnect = () => s.send('from the handler');
  next.accept({ seat: 'a', client: 1, recovered: true });
  assert.deepEqual(next.sent, ['r1', 'r2', 'from the handler']);
});

test('the queue is bounded: one message past maxQueued throws, nothing is lost before it', () => {
  const s = socket(undefined, { maxQueued: 3 });
  s.send('1');
  s.send('2');
  s.send('3');
  assert.throws(() => s.send('4'), (e) => e instanceof DOMException && e.name === 'QuotaExceededError');
  last().accept({ seat: 'a', client: 1, recovered: false });
  assert.deepEqual(last().sent, ['1', '2', '3']);
  s.send('5');  // open: not queued, no bound
  assert.deepEqual(last().sent, ['1', '2', '3', '5']);
});

test('the default bound is 1000 messages', () => {
  const s = socket();
  for (let i = 0; i < 1000; i++) s.send(String(i));
  assert.throws(() => s.send('one too many'), { name: 'QuotaExceededError' });
});

test('backoff doubles from minDelay to maxDelay, with jitter between half and all of it', () => {
  const delays = (random) => {
    Math.random.mock.mockImplementation(() => random);
    FakeWebSocket.made = [];
    const s = socket(undefined, { minDelay: 100, maxDelay: 1000 });
    const seen = [];
    s.addEventListener('drop', (e) => seen.push(e.delay));
    for (let i = 0; i < 7; i++) {
      const before = FakeWebSocket.made.length;
      last().drop();
      const delay = seen.at(-1);
      clock.tick(Math.ceil(delay) - 1);
      assert.equal(FakeWebSocket.made.length, before, `attempt ${i} came before its ${delay} ms`);
      clock.tick(1);
      assert.equal(FakeWebSocket.made.length, before + 1, `attempt ${i} did not come after ${delay} ms`);
    }
    s.close();
    return seen;
  };
  const caps = [100, 200, 400, 800, 1000, 1000, 1000];
  assert.deepEqual(delays(0), caps.map((c) => c / 2));
  assert.deepEqual(delays(0.5), caps.map((c) => c * 0.75));
  const top = delays(0.999999);
  top.forEach((d, i) => assert.ok(d <= caps[i] && d > caps[i] * 0.999, `${d} vs ${caps[i]}`));
});

test('the defaults are 250 ms and 10 s; a connection with its seat resets the backoff', () => {
  const s = socket();
  const seen = [];
  s.addEventListener('drop', (e) => seen.push(e.delay));
  last().accept({ seat: 'a', client: 1, recovered: false });
  for (let i = 0; i < 8; i++) {
    last().drop();
    clock.tick(10000);
  }
  last().accept({ seat: 'a', client: 1, recovered: true });
  last().drop();
  assert.deepEqual(s.drops, [1, 2, 3, 4, 5, 6, 7, 8, 1]);
  assert.deepEqual(seen, [250, 500, 1000, 2000, 4000, 8000, 10000, 10000, 250].map((c) => c * 0.75));
});

test('a failed first connection is retried; open comes with the first seat', () => {
  const s = socket();
  last().drop();
  clock.tick(10000);
  last().accept({ seat: 'a', client: 1, recovered: false });
  assert.deepEqual(s.log, ['drop 1006', 'open']);
  assert.equal(FakeWebSocket.made.length, 2);
});

test('maxRetries failed attempts in a row end it with error and close', () => {
  const s = socket(undefined, { maxRetries: 2 });
  last().accept({ seat: 'a', client: 1, recovered: false });
  last().drop();
  clock.tick(10000);
  last().drop();
  clock.tick(10000);
  last().drop();
  clock.tick(60000);
  assert.equal(FakeWebSocket.made.length, 3);
  assert.equal(s.readyState, StateroomSocket.CLOSED);
  assert.deepEqual(s.log, ['open', 'drop 1006', 'drop 1006', 'error', 'close 1006']);
});

test('4001 (seat resumed elsewhere) ends it without reconnecting', () => {
  const s = socket();
  last().accept({ seat: 'a', client: 1, recovered: false });
  s.send('before');
  last().drop(4001, 'seat resumed elsewhere', true);
  clock.tick(60000);
  assert.equal(FakeWebSocket.made.length, 1);
  assert.equal(s.readyState, StateroomSocket.CLOSED);
  assert.deepEqual(s.log, ['open', 'close 4001']);
  s.send('after');  // discarded, like WebSocket after close
  assert.equal(s.bufferedAmount, 0);
});

test('1008, 1011 and the services\' 4xxx codes end it; 1012, 1001, 1000, 1006 reconnect', () => {
  for (const code of [1008, 1011, 4000, 4999]) {
    FakeWebSocket.made = [];
    const s = socket();
    last().accept({ seat: 'a', client: 1, recovered: false });
    last().drop(code, '', true);
    clock.tick(60000);
    assert.equal(FakeWebSocket.made.length, 1, `code ${code}`);
    assert.deepEqual(s.log, ['open', `close ${code}`]);
  }
  for (const code of [1012, 1001, 1000, 1006, 1005]) {
    FakeWebSocket.made = [];
    const s = socket();
    last().accept({ seat: 'a', client: 1, recovered: false });
    last().drop(code, '', code !== 1006);
    clock.tick(10000);
    assert.equal(FakeWebSocket.made.length, 2, `code ${code}`);
    assert.deepEqual(query(last()), { seat: 'a', received: '0' });
    assert.equal(s.readyState, StateroomSocket.CONNECTING);
    s.close();
  }
});

test('close() ends it for good: a close handshake, then close, no reconnection', () => {
  const s = socket();
  last().accept({ seat: 'a', client: 1, recovered: false });
  s.close(4000, 'bye');
  assert.deepEqual(last().closedWith, [4000, 'bye']);
  assert.equal(s.readyState, StateroomSocket.CLOSING);
  last().message('late');  // arrives during the handshake: not delivered
  last().drop(4000, 'bye', true);
  clock.tick(60000);
  assert.equal(FakeWebSocket.made.length, 1);
  assert.equal(s.readyState, StateroomSocket.CLOSED);
  assert.deepEqual(s.log, ['open', 'close 4000']);
  s.close();  // again: nothing
  assert.deepEqual(s.log, ['open', 'close 4000']);
});

test('close() with an invalid code throws, like WebSocket, and changes nothing', () => {
  const s = socket();
  last().accept({ seat: 'a', client: 1, recovered: false });
  assert.throws(() => s.close(1234));
  assert.equal(s.readyState, StateroomSocket.OPEN);
});

test('close() between two attempts cancels the next one', async () => {
  const s = socket();
  last().accept({ seat: 'a', client: 1, recovered: false });
  last().drop();
  s.send('queued');
  s.close();
  assert.equal(s.readyState, StateroomSocket.CLOSED);
  await Promise.resolve();  // close is fired asynchronously, as by WebSocket
  clock.tick(60000);
  assert.equal(FakeWebSocket.made.length, 1);
  assert.equal(s.bufferedAmount, 0);
  assert.deepEqual(s.log, ['open', 'drop 1006', 'close 1005']);
});

test('close() before the seat message ends it without open', () => {
  const s = socket();
  last().open();
  s.send('x');
  s.close();
  last().seat({ seat: 'a', client: 1, recovered: false });
  last().drop(1005, '', true);
  assert.deepEqual(last().sent, []);
  assert.deepEqual(s.log, ['close 1005']);
});

test('protocols, binaryType and the WebSocket properties go to and come from the connection', () => {
  const s = socket(undefined, { protocols: ['stateroom', 'bearer.t'] });
  assert.deepEqual(last().protocols, ['stateroom', 'bearer.t']);
  assert.equal(s.binaryType, 'blob');
  s.binaryType = 'arraybuffer';
  assert.equal(last().binaryType, 'arraybuffer');
  last().protocol = 'stateroom';
  last().extensions = 'permessage-deflate';
  last().accept({ seat: 'a', client: 1, recovered: false });
  assert.deepEqual([s.protocol, s.extensions], ['stateroom', 'permessage-deflate']);
  last().drop();
  clock.tick(10000);
  assert.equal(last().binaryType, 'arraybuffer', 'kept across reconnections');
  assert.deepEqual(last().protocols, ['stateroom', 'bearer.t']);
});

test('a missing WebSocket class is a TypeError', () => {
  assert.throws(() => new StateroomSocket('ws://example.test/ws', { WebSocket: undefined }), TypeError);
});

test('events from a connection that was replaced are ignored', () => {
  const s = socket();
  const first = last();
  first.accept({ seat: 'a', client: 1, recovered: false });
  first.drop();
  clock.tick(10000);
  first.message('stale');
  first.drop();
  last().accept({ seat: 'a', client: 1, recovered: true });
  assert.deepEqual(s.log, ['open', 'drop 1006', 'reconnect true']);
  assert.equal(s.received, 0);
});

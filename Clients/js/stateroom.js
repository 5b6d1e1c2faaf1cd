/**
 * StateroomSocket: a WebSocket that keeps its seat in a Stateroom room across drops
 * (the resume protocol of docs/seats.md). One dependency-free ES module, for browsers and
 * Node >= 22 (whose global WebSocket it uses).
 *
 * @example
 * import { StateroomSocket } from '/stateroom.js';
 * const ws = new StateroomSocket('wss://example.com/ws/lobby');
 * ws.onmessage = (e) => show(e.data);           // service messages only, each exactly once
 * ws.onreconnect = (e) => { if (!e.recovered) rebuild(); };
 *
 * It is used like a browser `WebSocket` (`send`, `close(code, reason)`, `readyState`, `url`,
 * `binaryType`, `bufferedAmount`, `protocol`, `extensions`, `on<event>` and
 * `addEventListener`), and:
 * - connects with `seat=new` added to the URL's query (keep `token=` and the like in `url`;
 *   do not put `seat` or `received` there), consumes the server's seat message (it never
 *   reaches `message`) and counts the service's messages;
 * - after an unexpected drop (no close frame, 1012, 1001, any code but those below) reconnects
 *   with exponential backoff and jitter, asking to resume (`seat=<token>&received=<count>`);
 *   a failed first connection is retried the same way;
 * - ends for good, without reconnecting, on `close()`, on 4001 (the seat was resumed by another
 *   connection, e.g. another tab), on 1008, 1011 and 4000-4999 (the server ended the seat), and
 *   when `maxRetries` attempts in a row have failed;
 * - against a server that keeps no seats (`"seat": null`) it still reconnects after drops,
 *   each time as a new client (`recovered` false).
 *
 * Options (all optional):
 * - `minDelay` (ms, 250) and `maxDelay` (ms, 10000): the n-th attempt in a row (from 0) waits
 *   a random time between half and all of `min(maxDelay, minDelay * 2 ** n)`;
 * - `maxRetries` (Infinity): failed attempts in a row after which it gives up;
 * - `maxQueued` (1000): messages `send` keeps while not connected (before the first open and
 *   while reconnecting); they are sent in order, before any later `send`, once the next
 *   connection has its seat, even if that is a new seat. Past the bound `send` throws a
 *   `DOMException` named `QuotaExceededError` and the message is not queued. After `close()`
 *   `send` discards, like `WebSocket`. Messages sent just before a drop may be lost: the protocol
 *   replays what the server sent, not what the client sent;
 * - `protocols`: WebSocket subprotocols offered on every connection
 *   (e.g. `['stateroom', 'bearer.' + token]`);
 * - `WebSocket`: the WebSocket class to use (default `globalThis.WebSocket`; on Node 20, pass
 *   one, e.g. the `ws` package's).
 *
 * Properties besides WebSocket's: `clientId` (the seat's client, null before the first seat
 * message or without seats), `seat` (its token, or null), `recovered` (whether the last
 * connection resumed the seat) and `received` (the service messages counted on the seat).
 * `readyState` is CONNECTING until the first seat message and again while reconnecting.
 *
 * Events:
 * - `open`: once, when the first connection has its seat (`clientId` is known);
 * - `message`: a service message (`event.data`);
 * - `drop`: the connection was lost or an attempt failed, and another attempt follows
 *   (`event.code`, `event.reason`, `event.delay` in ms before it, `event.attempt`: 1 for the
 *   first attempt after a loss, counting up while attempts fail);
 * - `reconnect`: each later connection has its seat; `event.recovered` is true when nothing was
 *   missed (same `clientId`, the missed messages follow), false for a new seat (the application
 *   must rebuild what it shows, as after `open`); also `event.clientId`;
 * - `error`: the retries ran out (then `close`);
 * - `close`: once, when it ends for good (`event.code`, `event.reason`, `event.wasClean`).
 */

const CONNECTING = 0, OPEN = 1, CLOSING = 2, CLOSED = 3;

/** Close codes with which the server ends the seat: no reconnection. */
const ends = (code) => code === 1008 || code === 1011 || (code >= 4000 && code <= 4999);

/** The seat message, or null if `data` is not one. */
function seatMessage(data) {
  if (typeof data !== 'string' || !data.startsWith('{')) return null;
  try {
    const m = JSON.parse(data);
    return m && m.type === 'seat' ? m : null;
  } catch {
    return null;
  }
}

const byteLength = (d) => typeof d === 'string' ? new TextEncoder().encode(d).length : d.byteLength ?? d.size ?? 0;

export class StateroomSocket extends EventTarget {
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;
  onreconnect = null;
  ondrop = null;

  #url; #opts; #ws = null; #state = CONNECTING; #timer = null; #attempts = 0; #queue = [];
  #binaryType = null; #opened = false; #seated = false;
  #seat = null; #clientId = null; #recovered = false; #received = 0;

  constructor(url, options = {}) {
    super();
    this.#url = new URL(url, globalThis.location?.href).href;
    this.#opts = { minDelay: 250, maxDelay: 10000, maxRetries: Infinity, maxQueued: 1000,
                   WebSocket: globalThis.WebSocket, ...options };
    if (typeof this.#opts.WebSocket !== 'function') {
      throw new TypeError('StateroomSocket: no WebSocket class (pass one as options.WebSocket)');
    }
    this.#connect();
  }

  get url() { return this.#url; }
  get readyState() { return this.#state; }
  get binaryType() { return this.#binaryType ?? this.#ws?.binaryType ?? 'blob'; }
  set binaryType(type) { this.#binaryType = type; if (this.#ws) this.#ws.binaryType = type; }
  get bufferedAmount() {
    return (this.#ws?.bufferedAmount ?? 0) + this.#queue.reduce((n, d) => n + byteLength(d), 0);
  }
  get protocol() { return this.#ws?.protocol ?? ''; }
  get extensions() { return this.#ws?.extensions ?? ''; }
  get clientId() { return this.#clientId; }
  get seat() { return this.#seat; }
  get recovered() { return this.#recovered; }
  get received() { return this.#received; }

  send(data) {
    if (this.#state >= CLOSING) return;
    if (this.#state === OPEN && this.#ws.readyState === OPEN) return this.#ws.send(data);
    if (this.#queue.length >= this.#opts.maxQueued) {
      throw new DOMException(`StateroomSocket: ${this.#queue.length} messages are already queued (maxQueued)`,
                             'QuotaExceededError');
    }
    this.#queue.push(data);
  }

  close(code, reason) {
    if (this.#state >= CLOSING) return;
    if (this.#ws) {
      this.#ws.close(code, reason);  // its close event ends this socket
      this.#state = CLOSING;
      return;
    }
    clearTimeout(this.#timer);  // between two attempts
    this.#state = CLOSED;
    this.#queue.length = 0;
    queueMicrotask(() => this.#emit('close', { code: code ?? 1005, reason: reason ?? '', wasClean: true }));
  }

  #connect() {
    this.#timer = null;
    const target = new URL(this.#url);
    const query = this.#seat === null ? 'seat=new'
      : `seat=${encodeURIComponent(this.#seat)}&received=${this.#received}`;
    target.search = target.search ? `${target.search}&${query}` : query;
    const ws = new this.#opts.WebSocket(target.href, this.#opts.protocols);
    if (this.#binaryType) ws.binaryType = this.#binaryType;
    this.#ws = ws;
    this.#seated = false;
    ws.onmessage = (e) => { if (ws === this.#ws) this.#message(e); };
    ws.onclose = (e) => { if (ws === this.#ws) this.#closed(e); };
  }

  #message(e) {
    if (!this.#seated) {
      this.#seated = true;
      const seat = seatMessage(e.data);
      this.#takeSeat(seat);
      if (seat) return;
      // else a server that sends no seat message: this first message is the service's
    }
    if (this.#state !== OPEN) return;  // close() was called
    this.#received += 1;
    this.#emit('message', { data: e.data, origin: e.origin });
  }

  #takeSeat(msg) {
    const recovered = msg?.recovered === true;
    if (!recovered) this.#received = 0;
    this.#seat = msg?.seat ?? null;
    this.#clientId = msg?.client ?? null;
    this.#recovered = recovered;
    if (this.#state === CLOSING) return;
    this.#attempts = 0;
    this.#state = OPEN;
    for (const data of this.#queue.splice(0)) this.#ws.send(data);
    if (this.#opened) {
      this.#emit('reconnect', { recovered, clientId: this.#clientId });
    } else {
      this.#opened = true;
      this.#emit('open');
    }
  }

  #closed({ code, reason, wasClean }) {
    this.#ws = null;
    if (this.#state === CLOSING || ends(code)) return this.#end({ code, reason, wasClean });
    if (this.#attempts >= this.#opts.maxRetries) return this.#end({ code, reason, wasClean }, true);
    const cap = Math.min(this.#opts.maxDelay, this.#opts.minDelay * 2 ** this.#attempts++);
    const delay = cap / 2 + Math.random() * cap / 2;
    this.#state = CONNECTING;
    this.#timer = setTimeout(() => this.#connect(), delay);
    this.#emit('drop', { code, reason, delay, attempt: this.#attempts });
  }

  #end(close, failed = false) {
    this.#state = CLOSED;
    this.#queue.length = 0;
    if (failed) this.#emit('error');
    this.#emit('close', close);
  }

  #emit(type, init = {}) {
    const Native = type === 'message' ? globalThis.MessageEvent : type === 'close' ? globalThis.CloseEvent : null;
    const event = Native ? new Native(type, init) : Object.assign(new Event(type), init);
    this.dispatchEvent(event);
    const handler = this['on' + type];
    if (typeof handler === 'function') {
      try {
        handler.call(this, event);
      } catch (err) {
        queueMicrotask(() => { throw err; });  // reported like a listener's error
      }
    }
  }
}

for (const [value, name] of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED'].entries()) {
  Object.defineProperty(StateroomSocket, name, { value, enumerable: true });
  Object.defineProperty(StateroomSocket.prototype, name, { value, enumerable: true });
}

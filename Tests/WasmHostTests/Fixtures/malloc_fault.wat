;; A stateroom_malloc that fails on demand; anything else is relayed verbatim.
;;   `null` -> from the next event on, stateroom_malloc returns 0 (for a non-zero size)
;;   `past` -> from the next event on, it returns a block starting 2 bytes before the end of
;;             memory, so ptr + len is past the end
;; Either command sets a 0 ms timer, so the next event (the timer) comes at once, without
;; another client message.
;; Layout, allocator and helpers are the same in every fixture; each file stands alone.
(module
  (import "env" "stateroom_send" (func $send (param i32 i32)))

  (memory (export "memory") 2)
  ;; Layout: 16 version, 20 protocol, 256.. string literals, 1024.. scratch, 65536.. heap.
  (global $heap (mut i32) (i32.const 65536))
  (global (export "STATEROOM_API_VERSION") i32 (i32.const 16))
  (global (export "STATEROOM_API_PROTOCOL") i32 (i32.const 20))
  (data (i32.const 16) "\01\00\00\00\00\00\00\00")
  (data (i32.const 256) "\6e\75\6c\6c")
  (data (i32.const 272) "\70\61\73\74")
  ;; What the exported stateroom_malloc answers: 0 honestly, 1 null, 2 a block past the end.
  (global $fault (mut i32) (i32.const 0))

  ;; Bump allocator: 8-byte aligned, grows memory on demand, traps when it cannot.
  (func $malloc (param $size i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (if (i32.eqz (local.get $size)) (then (return (i32.const 0))))
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $p) (local.get $size)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535)) (i32.const 16)))
              (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (local.get $p))
  ;; The allocator the host calls: honest until a command arms a fault.
  (func (export "stateroom_malloc") (param $size i32) (result i32)
    (if (i32.eq (global.get $fault) (i32.const 1)) (then (return (i32.const 0))))
    ;; Two bytes before the end of memory: inside it, but no event (4 bytes or more) fits.
    (if (i32.eq (global.get $fault) (i32.const 2))
      (then (return (i32.sub (i32.mul (memory.size) (i32.const 65536)) (i32.const 2)))))
    (call $malloc (local.get $size)))
  ;; LIFO free: releasing the most recent block rewinds the bump pointer, so the
  ;; host's malloc/recv/free cycle keeps the heap from growing.
  (func $free (export "stateroom_free") (param $p i32) (param $size i32)
    (if (i32.eq (i32.add (local.get $p) (local.get $size)) (global.get $heap))
      (then (global.set $heap (local.get $p)))))

  ;; Sends MessageFromProcess::Message { recipient, payload }.
  ;; $rtag: 0 Broadcast, 1 Client, 2 EveryoneExcept; $kind: 0 Bytes, 1 Text.
  (func $send_payload (param $rtag i32) (param $client i32) (param $kind i32) (param $ptr i32) (param $len i32)
    (local $m i32) (local $o i32) (local $total i32)
    (local.set $total (i32.add (local.get $len) (select (i32.const 20) (i32.const 24) (i32.eqz (local.get $rtag)))))
    (local.set $m (call $malloc (local.get $total)))
    (i32.store (local.get $m) (i32.const 0))
    (i32.store offset=4 (local.get $m) (local.get $rtag))
    (local.set $o (i32.add (local.get $m) (i32.const 8)))
    (if (local.get $rtag)
      (then
        (i32.store (local.get $o) (local.get $client))
        (local.set $o (i32.add (local.get $o) (i32.const 4)))))
    (i32.store (local.get $o) (local.get $kind))
    (i64.store offset=4 (local.get $o) (i64.extend_i32_u (local.get $len)))
    (memory.copy (i32.add (local.get $o) (i32.const 12)) (local.get $ptr) (local.get $len))
    (call $send (local.get $m) (local.get $total))
    (call $free (local.get $m) (local.get $total)))

  ;; Sends MessageFromProcess::SetTimer { ms_delay }.
  (func $set_timer (param $ms i32)
    (i32.store (i32.const 1024) (i32.const 1))
    (i32.store (i32.const 1028) (local.get $ms))
    (call $send (i32.const 1024) (i32.const 8)))

  ;; 1 if the $alen bytes at $a equal the $blen bytes at $b.
  (func $eq (param $a i32) (param $alen i32) (param $b i32) (param $blen i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $alen) (local.get $blen)) (then (return (i32.const 0))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $alen)))
        (if (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                    (i32.load8_u (i32.add (local.get $b) (local.get $i))))
          (then (return (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 1))

  ;; 1 if the MessageToProcess at $msg is Message { Text(literal) }.
  (func $text_is (param $msg i32) (param $lit i32) (param $litlen i32) (result i32)
    (if (i32.ne (i32.load (local.get $msg)) (i32.const 3)) (then (return (i32.const 0))))
    (if (i32.ne (i32.load offset=8 (local.get $msg)) (i32.const 1)) (then (return (i32.const 0))))
    (call $eq (i32.add (local.get $msg) (i32.const 20)) (i32.load offset=12 (local.get $msg))
              (local.get $lit) (local.get $litlen)))

  ;; Writes $v in decimal at $out; returns the length.
  (func $itoa (param $v i32) (param $out i32) (result i32)
    (local $neg i32) (local $p i32) (local $len i32)
    (local.set $neg (i32.lt_s (local.get $v) (i32.const 0)))
    (if (local.get $neg) (then (local.set $v (i32.sub (i32.const 0) (local.get $v)))))
    (local.set $p (i32.const 1200))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $digit (local.get $v)))
    (if (local.get $neg)
      (then
        (local.set $p (i32.sub (local.get $p) (i32.const 1)))
        (i32.store8 (local.get $p) (i32.const 45))))
    (local.set $len (i32.sub (i32.const 1200) (local.get $p)))
    (memory.copy (local.get $out) (local.get $p) (local.get $len))
    (local.get $len))

  (func (export "stateroom_recv") (param $ptr i32) (param $len i32)
    (if (i32.ne (i32.load (local.get $ptr)) (i32.const 3)) (then (return)))
    (if (call $text_is (local.get $ptr) (i32.const 256) (i32.const 4))
      (then (global.set $fault (i32.const 1)) (call $set_timer (i32.const 0)) (return)))
    (if (call $text_is (local.get $ptr) (i32.const 272) (i32.const 4))
      (then (global.set $fault (i32.const 2)) (call $set_timer (i32.const 0)) (return)))
    (i32.store (local.get $ptr) (i32.const 0))
    (i32.store offset=4 (local.get $ptr) (i32.const 0))
    (call $send (local.get $ptr) (local.get $len)))
)

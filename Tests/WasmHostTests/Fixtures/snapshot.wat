;; A room whose state lives where an LLVM-built guest keeps it, for snapshot tests: a counter and
;; the allocator's heap pointer in linear memory, the number of messages in an exported mutable
;; global (`messages`, i64). Non-exported globals are constants, as between an LLVM guest's
;; callbacks.
;;   Init              -> broadcast `ready`
;;   every Message     -> messages += 1
;;   text `increment`  -> count += 1; broadcast `count C messages M`
;;   text `grow`       -> memory.grow 16 pages, a 1 in the first byte of the last page;
;;                        broadcast `pages P`
;;   text `info`       -> broadcast `mallocs K buffer P` (stateroom_malloc calls so far, and the
;;                        pointer of the event being handled)
(module
  (import "env" "stateroom_send" (func $send (param i32 i32)))

  (memory (export "memory") 2)
  ;; Layout: 16 version, 20 protocol, 256.. string literals, 1024.. scratch (1300.. replies),
  ;; 2000 heap pointer, 2004 malloc calls, 2048 count, 65536.. heap.
  (global (export "STATEROOM_API_VERSION") i32 (i32.const 16))
  (global (export "STATEROOM_API_PROTOCOL") i32 (i32.const 20))
  (global $messages (export "messages") (mut i64) (i64.const 0))
  (data (i32.const 16) "\01\00\00\00\00\00\00\00")
  (data (i32.const 256) "increment")
  (data (i32.const 272) "grow")
  (data (i32.const 280) "info")
  (data (i32.const 288) "ready")
  (data (i32.const 304) "count ")
  (data (i32.const 320) " messages ")
  (data (i32.const 336) "pages ")
  (data (i32.const 352) "mallocs ")
  (data (i32.const 368) " buffer ")
  (data (i32.const 2000) "\00\00\01\00")

  ;; Bump allocator, its heap pointer in memory (at 2000): 8-byte aligned, grows memory on
  ;; demand, traps when it cannot. Counts its calls at 2004.
  (func $malloc (export "stateroom_malloc") (param $size i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (i32.store (i32.const 2004) (i32.add (i32.load (i32.const 2004)) (i32.const 1)))
    (if (i32.eqz (local.get $size)) (then (return (i32.const 0))))
    (local.set $p (i32.and (i32.add (i32.load (i32.const 2000)) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $p) (local.get $size)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535)) (i32.const 16)))
              (i32.const -1))
          (then unreachable))))
    (i32.store (i32.const 2000) (local.get $end))
    (local.get $p))
  ;; LIFO free: releasing the most recent block rewinds the heap pointer.
  (func $free (export "stateroom_free") (param $p i32) (param $size i32)
    (if (i32.eq (i32.add (local.get $p) (local.get $size)) (i32.load (i32.const 2000)))
      (then (i32.store (i32.const 2000) (local.get $p)))))

  ;; Broadcasts the $len text bytes at $ptr (a heap block for the message, freed after).
  (func $broadcast (param $ptr i32) (param $len i32)
    (local $m i32) (local $total i32)
    (local.set $total (i32.add (local.get $len) (i32.const 20)))
    (local.set $m (call $malloc (local.get $total)))
    (i32.store (local.get $m) (i32.const 0))
    (i32.store offset=4 (local.get $m) (i32.const 0))
    (i32.store offset=8 (local.get $m) (i32.const 1))
    (i64.store offset=12 (local.get $m) (i64.extend_i32_u (local.get $len)))
    (memory.copy (i32.add (local.get $m) (i32.const 20)) (local.get $ptr) (local.get $len))
    (call $send (local.get $m) (local.get $total))
    (call $free (local.get $m) (local.get $total)))

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
    (if (i32.ne (i32.load offset=8 (local.get $msg)) (i32.const 1)) (then (return (i32.const 0))))
    (call $eq (i32.add (local.get $msg) (i32.const 20)) (i32.load offset=12 (local.get $msg))
              (local.get $lit) (local.get $litlen)))

  ;; Copies $len bytes from $src to $dst; returns the end of what was written.
  (func $append (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $len))
    (i32.add (local.get $dst) (local.get $len)))

  ;; Writes unsigned $v in decimal at $dst; returns the end of what was written.
  (func $append_int (param $dst i32) (param $v i32) (result i32)
    (local $p i32)
    (local.set $p (i32.const 1200))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $digit (local.get $v)))
    (call $append (local.get $dst) (local.get $p) (i32.sub (i32.const 1200) (local.get $p))))

  (func (export "stateroom_recv") (param $ptr i32) (param $len i32)
    (local $end i32)
    (if (i32.eqz (i32.load (local.get $ptr)))
      (then
        (call $broadcast (i32.const 288) (i32.const 5))
        (return)))
    (if (i32.ne (i32.load (local.get $ptr)) (i32.const 3)) (then (return)))
    (global.set $messages (i64.add (global.get $messages) (i64.const 1)))
    (if (call $text_is (local.get $ptr) (i32.const 256) (i32.const 9))
      (then
        (i32.store (i32.const 2048) (i32.add (i32.load (i32.const 2048)) (i32.const 1)))
        (local.set $end (call $append (i32.const 1300) (i32.const 304) (i32.const 6)))
        (local.set $end (call $append_int (local.get $end) (i32.load (i32.const 2048))))
        (local.set $end (call $append (local.get $end) (i32.const 320) (i32.const 10)))
        (local.set $end (call $append_int (local.get $end) (i32.wrap_i64 (global.get $messages))))
        (call $broadcast (i32.const 1300) (i32.sub (local.get $end) (i32.const 1300)))
        (return)))
    (if (call $text_is (local.get $ptr) (i32.const 272) (i32.const 4))
      (then
        (drop (memory.grow (i32.const 16)))
        (i32.store8 (i32.mul (i32.sub (memory.size) (i32.const 1)) (i32.const 65536)) (i32.const 1))
        (local.set $end (call $append (i32.const 1300) (i32.const 336) (i32.const 6)))
        (local.set $end (call $append_int (local.get $end) (memory.size)))
        (call $broadcast (i32.const 1300) (i32.sub (local.get $end) (i32.const 1300)))
        (return)))
    (if (call $text_is (local.get $ptr) (i32.const 280) (i32.const 4))
      (then
        (local.set $end (call $append (i32.const 1300) (i32.const 352) (i32.const 8)))
        (local.set $end (call $append_int (local.get $end) (i32.load (i32.const 2004))))
        (local.set $end (call $append (local.get $end) (i32.const 368) (i32.const 8)))
        (local.set $end (call $append_int (local.get $end) (local.get $ptr)))
        (call $broadcast (i32.const 1300) (i32.sub (local.get $end) (i32.const 1300))))))
)

//! A freestanding program that exercises shmlink-core with default features off (no `alloc`,
//! no `std`) and exits 0 only if the queue, the allocator and the codec behave.

#![no_std]
#![no_main]

use core::panic::PanicInfo;

use shmlink_core::buffer::{BufferList, BufferManager, LedgerWord, ListHeader, Role, SliceTable};
use shmlink_core::frame::{Decoded, Frame, Message};
use shmlink_core::queue::{Element, ElementSlot, LineAligned, Queue, QueueHeader, Wake};
use shmlink_core::slice::SliceHeader;

#[panic_handler]
fn panic(_: &PanicInfo<'_>) -> ! {
    loop {}
}

/// The prebuilt `libcore` of a `-gnu` target references an unwinding personality even with
/// panic=abort; nothing unwinds here, so an empty one satisfies the linker.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

// The C runtime's `_start` calls `main`; link libc for it (no Rust std involved).
#[link(name = "c")]
unsafe extern "C" {}

fn run() -> Result<(), u8> {
    let header = LineAligned(QueueHeader::new(4));
    let slots: [ElementSlot; 4] = core::array::from_fn(|_| ElementSlot::default());
    let (producer, mut consumer) = Queue::from_parts(&header, &slots).map_err(|_| 1)?.split();
    if producer.push(Element::data(2, 44)) != Ok(Wake::NotifyPeer) {
        return Err(2);
    }
    if consumer.pop() != Ok(Some(Element::data(2, 44))) {
        return Err(3);
    }

    let list_header = ListHeader::default();
    let slices: [SliceHeader; 4] = core::array::from_fn(|_| SliceHeader::default());
    let table = SliceTable::from_headers(&slices, 64).ok_or(4)?;
    let list = BufferList::format(&list_header, table, 8, Role::Creator).map_err(|_| 5)?;
    let ledger: [LedgerWord; 1] = core::array::from_fn(|_| LedgerWord::default());
    let manager = BufferManager::from_lists_in(&[list], 1024, &ledger).map_err(|_| 6)?;
    let chain = manager.alloc(100).map_err(|_| 7)?;
    if chain.count() != 2 || manager.free_chain(&chain) != Ok(2) || !manager.all_free() {
        return Err(8);
    }

    let mut wire = [0u8; 16];
    let frame = Frame::new(3, Message::HotRestart { epoch: 1122 });
    let n = frame.encode(&mut wire).map_err(|_| 9)?;
    match Frame::decode(core::hint::black_box(&wire[..n])) {
        Ok(Decoded::Frame(f, 16)) if f == frame => Ok(()),
        _ => Err(10),
    }
}

/// Entry point called by the C runtime.
#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    match run() {
        Ok(()) => 0,
        Err(code) => i32::from(code),
    }
}

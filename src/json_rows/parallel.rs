//! The line-by-line fast path with its rows parsed on several threads.
//!
//! Parsing and kind-checking every value is most of a check pass's time, and while import
//! checks its files the target has nothing to do, so the machine's other cores are free. The
//! calling thread frames lines (and the hashing thread hashes them) as before; blocks of lines
//! go to parsing threads; the parsed rows come back and are handed to `on_row` on the calling
//! thread, in file order. Memory stays bounded: a few blocks are in flight at a time.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::{Mutex, mpsc};
use std::thread;

use anyhow::Result;
use serde::de::DeserializeSeed;
use serde_json::Value;

use super::{RowLayout, RowSeed, export_lines};

/// About this much row text per block (a few hundred rows of a wide table).
const BLOCK_BYTES: usize = 128 * 1024;

/// Rows `first..` of the file, their object texts back to back.
struct Block {
    seq: u64,
    first: u64,
    text: String,
    ends: Vec<usize>,
}

impl Block {
    fn new(seq: u64, first: u64) -> Block {
        Block {
            seq,
            first,
            text: String::with_capacity(BLOCK_BYTES + 4096),
            ends: Vec::new(),
        }
    }
}

/// A block's rows as parsed: `values` holds `columns` values per row. `complete` is false when
/// a row did not parse (the general parser takes over from it).
struct Parsed {
    seq: u64,
    first: u64,
    rows: usize,
    values: Vec<Value>,
    complete: bool,
}

/// [`super::parse_lines`]: the same rows, the same answer.
pub(super) fn parse_lines(
    reader: impl BufRead,
    shape: &RowLayout,
    max_line: u64,
    on_row: &mut dyn FnMut(u64, &[Value]) -> Result<()>,
) -> Result<Option<u64>> {
    let workers = thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));
    let columns = shape.columns.len();
    let (blocks, received) = mpsc::sync_channel::<Block>(workers);
    let received = Mutex::new(received);
    thread::scope(|scope| {
        let (parsed_tx, parsed) = mpsc::channel::<Parsed>();
        for _ in 0..workers {
            let (received, parsed_tx) = (&received, parsed_tx.clone());
            scope.spawn(move || {
                let mut row: Vec<Option<Value>> = vec![None; columns];
                loop {
                    // The lock is held only while waiting for the next block.
                    let next = received.lock().expect("a parsing thread panicked").recv();
                    let Ok(block) = next else {
                        return;
                    };
                    if parsed_tx
                        .send(parse_block(shape, &block, &mut row))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
        drop(parsed_tx);

        let mut order = InOrder::default();
        let mut block = Block::new(0, 0);
        let framed = export_lines(reader, max_line, &mut |i, object| {
            block.text.push_str(object);
            block.ends.push(block.text.len());
            if block.text.len() >= BLOCK_BYTES {
                let seq = block.seq + 1;
                let full = std::mem::replace(&mut block, Block::new(seq, i + 1));
                blocks
                    .send(full)
                    .expect("parsing threads wait while the sender lives");
                while let Ok(p) = parsed.try_recv() {
                    order.take(p, columns, on_row)?;
                }
                if order.stopped {
                    return Ok(false);
                }
            }
            Ok(true)
        });
        if framed.is_ok() && !block.ends.is_empty() {
            blocks
                .send(block)
                .expect("parsing threads wait while the sender lives");
        }
        // Every block is sent: the threads finish theirs and stop.
        drop(blocks);
        let framed = framed?;
        for p in parsed {
            order.take(p, columns, on_row)?;
        }
        Ok(match framed {
            Some(rows) if !order.stopped => {
                debug_assert_eq!(rows, order.delivered);
                Some(rows)
            }
            _ => None,
        })
    })
}

fn parse_block(shape: &RowLayout, block: &Block, row: &mut Vec<Option<Value>>) -> Parsed {
    let mut values = Vec::with_capacity(block.ends.len() * row.len());
    let mut complete = true;
    let mut rows = 0;
    let mut start = 0;
    for (k, &end) in block.ends.iter().enumerate() {
        let object = &block.text[start..end];
        start = end;
        let mut de = serde_json::Deserializer::from_str(object);
        let ok = RowSeed {
            shape,
            row: &mut *row,
            number: block.first + k as u64 + 1,
            borrows: true,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .is_ok();
        if !ok {
            row.fill(None);
            complete = false;
            break;
        }
        values.extend(row.iter_mut().map(|v| v.take().unwrap_or(Value::Null)));
        rows += 1;
    }
    Parsed {
        seq: block.seq,
        first: block.first,
        rows,
        values,
        complete,
    }
}

/// Hands parsed blocks' rows to `on_row` in file order, up to the first row that did not
/// parse.
#[derive(Default)]
struct InOrder {
    next: u64,
    waiting: BTreeMap<u64, Parsed>,
    delivered: u64,
    stopped: bool,
}

impl InOrder {
    fn take(
        &mut self,
        parsed: Parsed,
        columns: usize,
        on_row: &mut dyn FnMut(u64, &[Value]) -> Result<()>,
    ) -> Result<()> {
        self.waiting.insert(parsed.seq, parsed);
        while let Some(p) = self.waiting.remove(&self.next) {
            self.next += 1;
            if self.stopped {
                continue;
            }
            for k in 0..p.rows {
                on_row(
                    p.first + k as u64,
                    &p.values[k * columns..(k + 1) * columns],
                )?;
                self.delivered += 1;
            }
            if !p.complete {
                self.stopped = true;
            }
        }
        Ok(())
    }
}

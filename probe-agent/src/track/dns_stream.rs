//! DNS messages carried over TCP (RFC 1035 §4.2.2, RFC 7766 §8): each is preceded by
//! its two-byte big-endian length, and the segments cut the stream anywhere.
//!
//! The kernel reports each segment's sequence number and payload length but copies
//! only the payload's first bytes: a GSO super-packet carries up to 64 KiB, most of it
//! uncaptured. Only each message's head is wanted, so the stream is walked by the
//! lengths: a body's uncaptured bytes are passed over, a length prefix in them loses the
//! framing. Segments ahead of the stream wait, a bounded few, for the gap to fill.

use std::mem;

/// Leading bytes of a message that are kept: the header and the first question (a
/// name is ≤ 255 bytes).
pub const HEAD_BYTES: usize = 300;
/// Segments ahead of the stream that wait at most; one more and the gap is taken as
/// never filling (its segment was lost with the agent's events, not on the wire).
const HELD_SEGMENTS: usize = 8;
/// Captured bytes kept of a waiting segment: a length prefix and a head. The rest
/// count as uncaptured, so memory stays bounded per stream.
const HELD_BYTES: usize = HEAD_BYTES + 2;

/// A DNS message found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMessage {
    /// The message's length from its prefix.
    pub len: u16,
    /// Its leading bytes: min(len, HEAD_BYTES) of them when `complete_head`, else as
    /// many as were captured.
    pub head: Vec<u8>,
    /// Whether every byte of `head` up to min(len, HEAD_BYTES) was captured.
    pub complete_head: bool,
}

/// Where the stream's next byte falls.
#[derive(Clone, Debug)]
enum Framing {
    /// In a length prefix, of which `have` bytes are in `bytes`.
    Prefix { bytes: [u8; 2], have: u8 },
    /// In the head of a message of `len` bytes, of which `head` is read.
    Head { len: u16, head: Vec<u8> },
    /// In the rest of a message whose head was returned: `left` bytes, captured or not.
    Body { left: u32 },
    /// Framing was lost; nothing more is read.
    Lost,
}

/// At the start of a message.
const PREFIX: Framing = Framing::Prefix {
    bytes: [0; 2],
    have: 0,
};

/// A segment ahead of the stream, waiting for the gap before it to fill.
#[derive(Clone, Debug)]
struct Held {
    seq: u32,
    len: u32,
    /// At most [`HELD_BYTES`] of its captured bytes.
    captured: Vec<u8>,
}

/// One direction of a DNS-over-TCP connection.
#[derive(Clone, Debug)]
pub struct DnsStream {
    /// Sequence number of the first byte not framed yet.
    next: u32,
    framing: Framing,
    held: Vec<Held>,
}

impl DnsStream {
    /// A stream whose first payload byte has sequence number `first_seq` (the SYN's
    /// sequence number + 1).
    pub fn new(first_seq: u32) -> Self {
        Self {
            next: first_seq,
            framing: PREFIX,
            held: Vec::new(),
        }
    }

    /// Feeds one segment; returns the messages whose head became known through it, in
    /// stream order. Those found before framing was lost in it are still returned.
    pub fn push(&mut self, seq: u32, payload_len: u32, captured: &[u8]) -> Vec<StreamMessage> {
        let mut out = Vec::new();
        if self.lost() || payload_len == 0 {
            return out;
        }
        // Bytes past the payload (an Ethernet frame's padding) are not the stream's.
        let captured = &captured[..captured.len().min(payload_len as usize)];
        let ahead = seq.wrapping_sub(self.next) as i32;
        if ahead <= 0 || self.pass_over(ahead as u32) {
            self.apply(seq, payload_len, captured, &mut out);
        } else {
            self.hold(seq, payload_len, captured);
        }
        self.drain(&mut out);
        out
    }

    /// Framing was lost: a length prefix fell in bytes that were never captured (or a
    /// gap that never filled). From then on `push` returns nothing.
    pub fn lost(&self) -> bool {
        matches!(self.framing, Framing::Lost)
    }

    /// Frames a segment that starts at or before `next`; its bytes before `next` were
    /// framed already (a retransmission or an overlap).
    fn apply(&mut self, seq: u32, len: u32, captured: &[u8], out: &mut Vec<StreamMessage>) {
        let mut pos = self.next.wrapping_sub(seq);
        if pos >= len {
            return;
        }
        // `captured` is at most `len` bytes long, so this fits.
        let cap = captured.len() as u32;
        while pos < len {
            match &mut self.framing {
                Framing::Lost => return,
                Framing::Prefix { bytes, have } => {
                    if pos >= cap {
                        // Without the length, where the next message starts is unknown.
                        self.lose();
                        return;
                    }
                    bytes[usize::from(*have)] = captured[pos as usize];
                    *have += 1;
                    pos += 1;
                    if *have == 2 {
                        let msg_len = u16::from_be_bytes(*bytes);
                        self.framing = if msg_len == 0 {
                            // Returned all the same: the caller decides what an empty one means.
                            out.push(StreamMessage {
                                len: 0,
                                head: Vec::new(),
                                complete_head: true,
                            });
                            PREFIX
                        } else {
                            Framing::Head {
                                len: msg_len,
                                head: Vec::with_capacity(usize::from(msg_len).min(HEAD_BYTES)),
                            }
                        };
                    }
                }
                Framing::Head { len: msg_len, head } => {
                    let msg_len = *msg_len;
                    let want = usize::from(msg_len).min(HEAD_BYTES);
                    let complete_head = if pos >= cap {
                        // The rest of the head is uncaptured; its length still frames on.
                        false
                    } else {
                        let start = pos as usize;
                        let take = (want - head.len()).min(captured.len() - start);
                        head.extend_from_slice(&captured[start..start + take]);
                        pos += take as u32;
                        if head.len() < want {
                            continue;
                        }
                        true
                    };
                    let head = mem::take(head);
                    let left = u32::from(msg_len) - head.len() as u32;
                    out.push(StreamMessage {
                        len: msg_len,
                        head,
                        complete_head,
                    });
                    self.framing = if left == 0 {
                        PREFIX
                    } else {
                        Framing::Body { left }
                    };
                }
                Framing::Body { left } => {
                    let step = (*left).min(len - pos);
                    pos += step;
                    *left -= step;
                    if *left == 0 {
                        self.framing = PREFIX;
                    }
                }
            }
        }
        self.next = seq.wrapping_add(len);
    }

    /// Moves `next` on by `gap` when those bytes are all in the body being passed over:
    /// their content is not needed, so a segment beyond them need not wait for them.
    fn pass_over(&mut self, gap: u32) -> bool {
        let Framing::Body { left } = &mut self.framing else {
            return false;
        };
        if gap > *left {
            return false;
        }
        *left -= gap;
        if *left == 0 {
            self.framing = PREFIX;
        }
        self.next = self.next.wrapping_add(gap);
        true
    }

    /// Keeps a segment ahead of the stream; one too many loses the framing.
    fn hold(&mut self, seq: u32, len: u32, captured: &[u8]) {
        let captured = &captured[..captured.len().min(HELD_BYTES)];
        // A retransmission of a waiting segment takes no second place; the longer stays.
        if let Some(held) = self.held.iter_mut().find(|held| held.seq == seq) {
            if (len, captured.len()) > (held.len, held.captured.len()) {
                held.len = len;
                held.captured = captured.to_vec();
            }
            return;
        }
        if self.held.len() == HELD_SEGMENTS {
            self.lose();
            return;
        }
        self.held.push(Held {
            seq,
            len,
            captured: captured.to_vec(),
        });
    }

    /// Frames the waiting segments that the stream has reached, in stream order.
    fn drain(&mut self, out: &mut Vec<StreamMessage>) {
        while !self.lost() && !self.held.is_empty() {
            let next = self.next;
            // Those wholly framed already were overtaken by a retransmission.
            self.held.retain(|held| {
                held.seq.wrapping_sub(next) as i32 > 0 || next.wrapping_sub(held.seq) < held.len
            });
            // Of those reached, the one captured furthest gives the most.
            let reached = self
                .held
                .iter()
                .enumerate()
                .filter(|(_, held)| held.seq.wrapping_sub(next) as i32 <= 0)
                .max_by_key(|(_, held)| {
                    let end = held.seq.wrapping_add(held.captured.len() as u32);
                    end.wrapping_sub(next) as i32
                })
                .map(|(i, _)| i);
            if let Some(i) = reached {
                let held = self.held.swap_remove(i);
                self.apply(held.seq, held.len, &held.captured, out);
                continue;
            }
            let nearest = self
                .held
                .iter()
                .map(|held| held.seq.wrapping_sub(next))
                .min();
            match nearest {
                Some(gap) if self.pass_over(gap) => {}
                _ => return,
            }
        }
    }

    fn lose(&mut self) {
        self.framing = Framing::Lost;
        self.held = Vec::new();
    }

    /// Bytes kept for framing: the head being read and the waiting segments' captures.
    #[cfg(test)]
    fn retained(&self) -> usize {
        let head = match &self.framing {
            Framing::Head { head, .. } => head.capacity(),
            _ => 0,
        };
        head + self
            .held
            .iter()
            .map(|held| held.captured.capacity())
            .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: u32 = 1_000;

    /// A message of `len` bytes: an ID, then bytes that tell their position apart.
    fn message(id: u16, len: usize) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..len).map(|i| (i * 7 + usize::from(id)) as u8).collect();
        bytes
            .iter_mut()
            .zip(id.to_be_bytes())
            .for_each(|(b, id)| *b = id);
        bytes
    }

    /// The messages as written on the connection, each after its length.
    fn framed(messages: &[Vec<u8>]) -> Vec<u8> {
        messages
            .iter()
            .flat_map(|m| {
                (m.len() as u16)
                    .to_be_bytes()
                    .into_iter()
                    .chain(m.iter().copied())
            })
            .collect()
    }

    /// What a wholly captured message is returned as.
    fn found(message: &[u8]) -> StreamMessage {
        StreamMessage {
            len: message.len() as u16,
            head: message[..message.len().min(HEAD_BYTES)].to_vec(),
            complete_head: true,
        }
    }

    /// Pushes `bytes[from..to]` as one wholly captured segment.
    fn push(
        stream: &mut DnsStream,
        first: u32,
        bytes: &[u8],
        from: usize,
        to: usize,
    ) -> Vec<StreamMessage> {
        stream.push(
            first.wrapping_add(from as u32),
            (to - from) as u32,
            &bytes[from..to],
        )
    }

    /// A deterministic pseudo-random sequence (Knuth's MMIX LCG), high bits first.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 32) as u32
        }

        fn below(&mut self, n: u32) -> u32 {
            self.next() % n.max(1)
        }
    }

    #[test]
    fn several_messages_in_one_segment_are_all_returned_in_order() {
        // A resolver writes the A and AAAA queries together.
        let (a, aaaa) = (message(1, 40), message(2, 40));
        let bytes = framed(&[a.clone(), aaaa.clone()]);
        let mut stream = DnsStream::new(FIRST);
        assert_eq!(
            push(&mut stream, FIRST, &bytes, 0, bytes.len()),
            [found(&a), found(&aaaa)]
        );
        assert!(!stream.lost());
    }

    #[test]
    fn a_message_split_inside_its_length_prefix() {
        let m = message(1, 50);
        let bytes = framed(std::slice::from_ref(&m));
        let mut stream = DnsStream::new(FIRST);
        assert_eq!(push(&mut stream, FIRST, &bytes, 0, 1), []);
        assert_eq!(
            push(&mut stream, FIRST, &bytes, 1, bytes.len()),
            [found(&m)]
        );
    }

    #[test]
    fn a_message_split_inside_its_header() {
        let m = message(1, 50);
        let bytes = framed(std::slice::from_ref(&m));
        let mut stream = DnsStream::new(FIRST);
        assert_eq!(push(&mut stream, FIRST, &bytes, 0, 2 + 5), []);
        assert_eq!(
            push(&mut stream, FIRST, &bytes, 7, bytes.len()),
            [found(&m)]
        );
    }

    #[test]
    fn a_message_split_inside_its_body() {
        // Inside the head, then past it: the head is returned once it is whole.
        let (long, short) = (message(1, 1_000), message(2, 30));
        let bytes = framed(&[long.clone(), short.clone()]);
        let mut stream = DnsStream::new(FIRST);
        assert_eq!(push(&mut stream, FIRST, &bytes, 0, 100), []);
        assert_eq!(push(&mut stream, FIRST, &bytes, 100, 600), [found(&long)]);
        assert_eq!(
            push(&mut stream, FIRST, &bytes, 600, bytes.len()),
            [found(&short)]
        );
    }

    #[test]
    fn every_split_into_three_segments_frames_alike() {
        let messages = [
            message(1, 12),
            message(2, 0),
            message(3, 40),
            message(4, 310),
        ];
        let bytes = framed(&messages);
        let expected: Vec<_> = messages.iter().map(|m| found(m)).collect();
        for i in 0..=bytes.len() {
            for j in (i..=bytes.len()).step_by(7) {
                let mut stream = DnsStream::new(FIRST);
                let mut got = push(&mut stream, FIRST, &bytes, 0, i);
                got.extend(push(&mut stream, FIRST, &bytes, i, j));
                got.extend(push(&mut stream, FIRST, &bytes, j, bytes.len()));
                assert_eq!(got, expected, "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn a_retransmission_returns_no_message_twice() {
        let (a, b) = (message(1, 40), message(2, 40));
        let bytes = framed(&[a.clone(), b.clone()]);
        let mut stream = DnsStream::new(FIRST);
        assert_eq!(push(&mut stream, FIRST, &bytes, 0, 42), [found(&a)]);
        assert_eq!(push(&mut stream, FIRST, &bytes, 0, 42), []);
        assert_eq!(
            push(&mut stream, FIRST, &bytes, 42, bytes.len()),
            [found(&b)]
        );
        assert_eq!(push(&mut stream, FIRST, &bytes, 0, bytes.len()), []);
        assert!(!stream.lost());
    }

    #[test]
    fn an_overlapping_segment_frames_only_its_new_bytes() {
        let (a, b, c) = (message(1, 40), message(2, 40), message(3, 40));
        let bytes = framed(&[a.clone(), b.clone(), c.clone()]);
        let mut stream = DnsStream::new(FIRST);
        assert_eq!(push(&mut stream, FIRST, &bytes, 0, 60), [found(&a)]);
        // Resent from the start, with more: only b and c are new.
        assert_eq!(
            push(&mut stream, FIRST, &bytes, 0, bytes.len()),
            [found(&b), found(&c)]
        );
    }

    #[test]
    fn sequence_numbers_wrap_around() {
        let (a, b) = (message(1, 40), message(2, 40));
        let bytes = framed(&[a.clone(), b.clone()]);
        let first = u32::MAX - 20;
        let mut stream = DnsStream::new(first);
        assert_eq!(push(&mut stream, first, &bytes, 0, 30), []);
        // This one starts past the wrap and is ahead of the stream: it waits.
        assert_eq!(push(&mut stream, first, &bytes, 50, bytes.len()), []);
        assert_eq!(
            push(&mut stream, first, &bytes, 10, 50),
            [found(&a), found(&b)]
        );
        assert_eq!(push(&mut stream, first, &bytes, 0, bytes.len()), []);
        assert!(!stream.lost());
    }

    #[test]
    fn a_segment_ahead_waits_until_the_gap_fills() {
        let (a, b, c) = (message(1, 40), message(2, 40), message(3, 40));
        let bytes = framed(&[a.clone(), b.clone(), c.clone()]);
        let mut stream = DnsStream::new(FIRST);
        assert_eq!(push(&mut stream, FIRST, &bytes, 84, bytes.len()), []);
        assert_eq!(push(&mut stream, FIRST, &bytes, 42, 84), []);
        assert_eq!(
            push(&mut stream, FIRST, &bytes, 0, 42),
            [found(&a), found(&b), found(&c)]
        );
        assert!(!stream.lost());
    }

    #[test]
    fn more_than_eight_waiting_segments_lose_the_framing() {
        let messages: Vec<_> = (0..10).map(|id| message(id, 20)).collect();
        let bytes = framed(&messages);
        let mut stream = DnsStream::new(FIRST);
        for k in 1..=8 {
            assert_eq!(push(&mut stream, FIRST, &bytes, k * 22, k * 22 + 22), []);
        }
        assert!(!stream.lost(), "eight may wait");
        push(&mut stream, FIRST, &bytes, 9 * 22, 10 * 22);
        assert!(stream.lost());
        assert_eq!(stream.retained(), 0);
        assert_eq!(push(&mut stream, FIRST, &bytes, 0, bytes.len()), []);
    }

    #[test]
    fn a_waiting_segment_resent_takes_one_place() {
        let (a, b) = (message(1, 40), message(2, 40));
        let bytes = framed(&[a.clone(), b.clone()]);
        let mut stream = DnsStream::new(FIRST);
        for _ in 0..20 {
            assert_eq!(push(&mut stream, FIRST, &bytes, 42, bytes.len()), []);
        }
        assert!(!stream.lost());
        assert_eq!(
            push(&mut stream, FIRST, &bytes, 0, 42),
            [found(&a), found(&b)]
        );
    }

    #[test]
    fn a_gap_in_a_body_passed_over_is_not_waited_for() {
        // The middle of a large answer was never seen: its bytes are not needed.
        let (big, next) = (message(1, 5_000), message(2, 40));
        let bytes = framed(&[big.clone(), next.clone()]);
        let mut stream = DnsStream::new(FIRST);
        assert_eq!(push(&mut stream, FIRST, &bytes, 0, 1_000), [found(&big)]);
        for k in 2..12 {
            assert_eq!(push(&mut stream, FIRST, &bytes, k * 400, k * 400 + 100), []);
        }
        assert_eq!(
            push(&mut stream, FIRST, &bytes, 5_002, bytes.len()),
            [found(&next)]
        );
        assert!(!stream.lost());
    }

    #[test]
    fn waiting_segments_keep_bounded_bytes() {
        let messages: Vec<_> = (0..8).map(|id| message(id, 60_000)).collect();
        let bytes = framed(&messages);
        let mut stream = DnsStream::new(FIRST);
        // A head in progress, then eight super-packets ahead, each wholly "captured".
        assert_eq!(push(&mut stream, FIRST, &bytes, 0, 100), []);
        for k in 1..=8 {
            let to = (k * 60_002 + 59_000).min(bytes.len());
            push(&mut stream, FIRST, &bytes, k * 60_002 - 5, to);
        }
        assert!(!stream.lost());
        assert!(stream.retained() <= HEAD_BYTES + HELD_SEGMENTS * HELD_BYTES);
    }

    #[test]
    fn an_uncaptured_body_is_passed_over_by_its_length() {
        // A large answer in a GSO super-packet: only its first 400 bytes were copied.
        let (big, next) = (message(1, 20_000), message(2, 40));
        let bytes = framed(&[big.clone(), next.clone()]);
        let mut stream = DnsStream::new(FIRST);
        assert_eq!(stream.push(FIRST, 20_002, &bytes[..400]), [found(&big)]);
        assert_eq!(
            push(&mut stream, FIRST, &bytes, 20_002, bytes.len()),
            [found(&next)]
        );
        assert!(!stream.lost());
    }

    #[test]
    fn a_length_prefix_in_uncaptured_bytes_loses_the_framing() {
        let (big, next, last) = (message(1, 20_000), message(2, 40), message(3, 40));
        let bytes = framed(&[big.clone(), next, last]);
        let mut stream = DnsStream::new(FIRST);
        // `next`'s prefix is in the super-packet, past what was captured.
        assert_eq!(stream.push(FIRST, 20_044, &bytes[..400]), [found(&big)]);
        assert!(stream.lost());
        assert_eq!(push(&mut stream, FIRST, &bytes, 20_044, bytes.len()), []);
    }

    #[test]
    fn a_partly_captured_head_is_returned_incomplete() {
        let (big, next) = (message(1, 1_000), message(2, 40));
        let bytes = framed(&[big.clone(), next.clone()]);
        let mut stream = DnsStream::new(FIRST);
        assert_eq!(
            stream.push(FIRST, 1_002, &bytes[..100]),
            [StreamMessage {
                len: 1_000,
                head: big[..98].to_vec(),
                complete_head: false
            }]
        );
        assert_eq!(
            push(&mut stream, FIRST, &bytes, 1_002, bytes.len()),
            [found(&next)]
        );
        assert!(!stream.lost());
    }

    #[test]
    fn bytes_past_the_payload_are_padding() {
        let m = message(1, 20);
        let mut bytes = framed(std::slice::from_ref(&m));
        let len = bytes.len() as u32;
        bytes.extend([0xff; 30]);
        let mut stream = DnsStream::new(FIRST);
        assert_eq!(stream.push(FIRST, len, &bytes), [found(&m)]);
        assert_eq!(stream.push(FIRST + len, 2, &[0, 0]), [found(&[])]);
        assert!(!stream.lost());
    }

    #[test]
    fn a_zero_length_message_is_returned_empty() {
        let (empty, m) = (message(0, 0), message(1, 20));
        let bytes = framed(&[empty.clone(), m.clone(), empty.clone()]);
        let expected = StreamMessage {
            len: 0,
            head: Vec::new(),
            complete_head: true,
        };
        assert_eq!(found(&empty), expected);
        let mut stream = DnsStream::new(FIRST);
        assert_eq!(
            push(&mut stream, FIRST, &bytes, 0, 2),
            std::slice::from_ref(&expected)
        );
        assert_eq!(
            push(&mut stream, FIRST, &bytes, 2, bytes.len()),
            [found(&m), expected]
        );
    }

    #[test]
    fn reordered_and_resent_segments_frame_like_one_segment() {
        let mut rng = Lcg(7);
        for round in 0..300 {
            let messages: Vec<_> = (0..rng.below(6) + 1)
                .map(|id| {
                    message(
                        id as u16,
                        rng.below(if id % 3 == 0 { 700 } else { 60 }) as usize,
                    )
                })
                .collect();
            let bytes = framed(&messages);
            let expected: Vec<_> = messages.iter().map(|m| found(m)).collect();
            let mut cuts = vec![0];
            while *cuts.last().unwrap() < bytes.len() {
                let at = cuts.last().unwrap() + rng.below(80) as usize + 1;
                cuts.push(at.min(bytes.len()));
            }
            let mut segments: Vec<_> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
            // Neighbours swapped (one waits), some resent later, some resent at once.
            for i in (1..segments.len()).step_by(2) {
                if rng.below(2) == 0 {
                    segments.swap(i - 1, i);
                }
            }
            for _ in 0..rng.below(4) {
                let i = rng.below(segments.len() as u32) as usize;
                let resent = segments[rng.below(segments.len() as u32) as usize];
                segments.insert(i, resent);
            }
            let first = rng.next();
            let mut stream = DnsStream::new(first);
            let got: Vec<_> = segments
                .iter()
                .flat_map(|&(from, to)| push(&mut stream, first, &bytes, from, to))
                .collect();
            assert_eq!(got, expected, "round {round}: {segments:?}");
            assert!(!stream.lost());
        }
    }

    #[test]
    fn arbitrary_segments_never_panic() {
        let mut rng = Lcg(42);
        let noise: Vec<u8> = (0..2_000).map(|_| rng.next() as u8).collect();
        for _ in 0..2_000 {
            let first = rng.next();
            let mut stream = DnsStream::new(first);
            let mut at = first;
            for _ in 0..rng.below(40) {
                // Mostly near the stream's end, sometimes anywhere.
                let seq = match rng.below(4) {
                    0 => rng.next(),
                    1 => at.wrapping_sub(rng.below(2_000)),
                    _ => at.wrapping_add(rng.below(300)),
                };
                let len = match rng.below(5) {
                    0 => rng.next(),
                    1 => rng.below(65_536),
                    _ => rng.below(500),
                };
                let start = rng.below(1_000) as usize;
                let captured = &noise[start..start + rng.below(600) as usize];
                let messages = stream.push(seq, len, captured);
                assert!(
                    messages
                        .iter()
                        .all(|m| m.head.len() <= HEAD_BYTES.min(usize::from(m.len)))
                );
                assert!(stream.retained() <= HEAD_BYTES + HELD_SEGMENTS * HELD_BYTES);
                assert!(stream.held.len() <= HELD_SEGMENTS);
                if rng.below(2) == 0 {
                    at = seq.wrapping_add(len.min(600));
                }
            }
        }
    }
}

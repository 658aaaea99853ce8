//! The codec by table: every body round-trips, and each kind of damage
//! loses exactly the damaged record, with a warning.

use super::*;
use crate::Kind;

fn event(seq: u64) -> Event {
    Event {
        seq,
        time_ms: 1_700_000_000_000 + seq,
        resource: format!("r{seq}"),
        kind: Kind::SplitBrain,
        args: vec!["a b".into(), "HEV1\u{0}\"".into()],
        details: vec![("ROLE".into(), "primary".into())],
    }
}

fn bodies() -> Vec<Body> {
    vec![
        Body::Meta { next_seq: 7 },
        Body::Event(event(1)),
        Body::State {
            seq: 1,
            state: State::Running,
            updated_ms: 5,
            attempts: 1,
            note: String::new(),
        },
        Body::Pruned { seq: 3 },
        Body::Entry(Entry {
            event: event(2),
            state: State::Failed,
            updated_ms: 9,
            attempts: 3,
            note: "exit status 3".into(),
        }),
    ]
}

fn encode_all(bodies: &[Body]) -> (Vec<u8>, Vec<usize>) {
    let mut buf = Vec::new();
    let mut starts = Vec::new();
    for b in bodies {
        starts.push(buf.len());
        encode_into(b, &mut buf).expect("small record");
    }
    (buf, starts)
}

#[test]
fn round_trip() {
    let all = bodies();
    for b in &all {
        let rec = encode(b).expect("small record");
        assert_eq!(&rec[..4], b"HEV1");
        let d = decode_records(&rec);
        assert_eq!(d.records, vec![b.clone()]);
        assert!(d.warnings.is_empty());
        assert_eq!((d.frames, d.good_end), (1, rec.len()));
    }
    let (buf, _) = encode_all(&all);
    let d = decode_records(&buf);
    assert_eq!(d.records, all);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(d.good_end, buf.len());
    assert!(!d.torn_tail(buf.len()));
    assert_eq!(decode_records(&[]), Decoded::default());
}

#[test]
fn oversize_refused_when_encoding() {
    let mut ev = event(1);
    ev.args = vec!["x".repeat(MAX_PAYLOAD)];
    let mut out = vec![1, 2, 3];
    assert!(matches!(
        encode_into(&Body::Event(ev), &mut out),
        Err(EncodeError::TooLarge { len }) if len > MAX_PAYLOAD
    ));
    assert_eq!(out, vec![1, 2, 3], "left unchanged");
}

/// A header with `len` and the checksum of `payload`, then `payload`.
fn raw(len: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn damage_table() {
    let all = bodies();
    let (good, starts) = encode_all(&all);
    let second = starts[1]..starts[2];
    let n = good.len();
    // (name, damaged buffer, indexes of the bodies that survive, good_end,
    // a word the warning has)
    type Case = (&'static str, Vec<u8>, Vec<usize>, usize, &'static str);
    let mut cases: Vec<Case> = Vec::new();

    let mut b = good.clone();
    b[second.start] = b'X';
    cases.push(("bad magic", b, vec![0, 2, 3, 4], n, "no record magic"));

    let mut b = good.clone();
    b[second.start + 8] ^= 1;
    cases.push(("bad crc", b, vec![0, 2, 3, 4], n, "checksum"));

    let mut b = good.clone();
    b[second.end - 2] ^= 0x40;
    cases.push(("payload bit flip", b, vec![0, 2, 3, 4], n, "checksum"));

    let mut b = good.clone();
    b[second.start + 4..second.start + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    cases.push(("oversize length", b, vec![0, 2, 3, 4], n, "over the limit"));

    let mut b = good.clone();
    b[second.start + 4..second.start + 8].copy_from_slice(&(n as u32).to_le_bytes());
    cases.push(("length past the end", b, vec![0, 2, 3, 4], n, "cut short"));

    let mut b = good[..starts[4] + 5].to_vec();
    let end = starts[4];
    cases.push((
        "truncated header",
        b.clone(),
        vec![0, 1, 2, 3],
        end,
        "short record header",
    ));
    b = good[..n - 3].to_vec();
    cases.push(("truncated payload", b, vec![0, 1, 2, 3], end, "cut short"));

    let mut b = good[..second.start].to_vec();
    let garbage = b"garbage HEV1 more garbage\0\0\0\0";
    b.extend_from_slice(garbage);
    b.extend_from_slice(&good[second.start..]);
    let end = n + garbage.len();
    cases.push((
        "garbage between records",
        b,
        vec![0, 1, 2, 3, 4],
        end,
        "bytes skipped",
    ));

    let mut b = good.clone();
    b.extend_from_slice(&[0xa5; 100]);
    cases.push((
        "garbage tail",
        b,
        vec![0, 1, 2, 3, 4],
        n,
        "torn tail of 100 bytes",
    ));

    let mut b = good[..second.start].to_vec();
    b.extend_from_slice(&raw(9, b"not json!"));
    b.extend_from_slice(&good[second.start..]);
    cases.push((
        "unreadable payload",
        b,
        vec![0, 1, 2, 3, 4],
        n + 21,
        "unreadable payload",
    ));

    let mut b = good[..second.start].to_vec();
    b.extend_from_slice(&raw(0, b""));
    cases.push((
        "empty payload at the end",
        b,
        vec![0],
        second.start + 12,
        "unreadable",
    ));

    for (name, buf, keep, good_end, word) in cases {
        let d = decode_records(&buf);
        let want: Vec<Body> = keep.iter().map(|&i| all[i].clone()).collect();
        assert_eq!(d.records, want, "{name}");
        assert_eq!(d.good_end, good_end, "{name}");
        assert_eq!(d.warnings.len(), 1, "{name}: {:?}", d.warnings);
        assert!(d.warnings[0].contains(word), "{name}: {:?}", d.warnings);
    }
}

#[test]
fn every_truncation_and_flip_is_survived() {
    let all = bodies();
    let (good, starts) = encode_all(&all);
    for cut in 0..good.len() {
        let d = decode_records(&good[..cut]);
        let whole = starts
            .iter()
            .skip(1)
            .chain([&good.len()])
            .filter(|&&e| e <= cut)
            .count();
        assert_eq!(d.records, all[..whole], "cut at {cut}");
    }
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x10;
        let d = decode_records(&b);
        // Exactly the record holding byte i is lost (a flip in its length
        // field may lose it and nothing else).
        let hit = starts.iter().rposition(|&s| s <= i).unwrap_or(0);
        let mut want = all.clone();
        want.remove(hit);
        assert_eq!(d.records, want, "flip at {i}");
        assert!(!d.warnings.is_empty());
    }
}

#[test]
fn golden_bytes() {
    // The format as documented, byte for byte (checksum computed apart:
    // crc32c of the payload).
    let mut want = b"HEV1".to_vec();
    want.extend_from_slice(&[20, 0, 0, 0, 0xae, 0x28, 0x8d, 0x08]);
    want.extend_from_slice(br#"{"pruned":{"seq":2}}"#);
    assert_eq!(encode(&Body::Pruned { seq: 2 }).expect("small"), want);
    assert_eq!(decode_records(&want).records, vec![Body::Pruned { seq: 2 }]);
}

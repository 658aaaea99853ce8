//! The discovery exchange as tables: who sees which resource, which answers
//! a client accepts, and that malformed input is an error, never a panic.

use super::*;

const K1: &[u8] = b"0123456789abcdef-current";
const K2: &[u8] = b"fedcba9876543210-next";
const K3: &[u8] = b"an-attackers-guess-0000";

fn entry(name: &str, role: Role) -> Entry {
    Entry {
        name: name.into(),
        export: name.into(),
        role,
        epoch: 7,
        status: Status::Complete,
        size: 1 << 30,
        nbd: vec!["tcp://127.0.0.1:10809".into()],
        nbd_tls: false,
    }
}

/// `open` (no secret) and `locked` (secret K1, next K2).
fn offers() -> Vec<Offer<'static>> {
    vec![
        Offer {
            entry: entry("open", Role::Primary),
            keys: None,
        },
        Offer {
            entry: entry("locked", Role::Secondary),
            keys: Some(vec![K1, K2]),
        },
    ]
}

/// One whole exchange: what the client, offering `key`, ends up with.
fn exchange(key: Option<&[u8]>, offers: &[Offer<'_>]) -> Result<Vec<String>, CheckError> {
    let g = Greeting::decode(&Greeting::new([3; NONCE_LEN]).encode())?;
    let req = request(&g, [5; NONCE_LEN], key)?;
    let req = Request::decode(&req.encode())?;
    let (wire, _) = answer(&g, &req, offers)?;
    let (body, tag) = split_answer(&wire);
    let entries = check_answer(&g, &req, body, &tag, key)?;
    Ok(entries.into_iter().map(|e| e.name).collect())
}

fn split_answer(wire: &[u8]) -> (&[u8], Tag) {
    let (prefix, rest) = wire.split_at(ANSWER_PREFIX_LEN);
    let len = decode_answer_len(prefix.try_into().unwrap()).unwrap();
    assert_eq!(rest.len(), len + MAC_LEN);
    let (body, tag) = rest.split_at(len);
    (body, tag.try_into().unwrap())
}

#[test]
fn who_sees_what() {
    type Case<'a> = (&'a str, Option<&'a [u8]>, Result<&'a [&'a str], CheckError>);
    let cases: [Case; 4] = [
        // Without a secret: the open resource only, the locked one unseen.
        ("no secret", None, Ok(&["open"])),
        ("current key", Some(K1), Ok(&["open", "locked"])),
        // Rotation: the server accepts its next key too.
        ("next key", Some(K2), Ok(&["open", "locked"])),
        // A wrong key: the server cannot MAC its answer with it, so the
        // client refuses the answer rather than trust an unproven server.
        ("wrong key", Some(K3), Err(CheckError::Unauthenticated)),
    ];
    for (what, key, want) in cases {
        let got = exchange(key, &offers());
        let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn an_unauthenticated_client_learns_nothing_of_a_locked_resource() {
    let g = Greeting::new([1; NONCE_LEN]);
    let locked_only = &offers()[1..];
    for key in [None, Some(K3)] {
        let req = request(&g, [2; NONCE_LEN], key).unwrap();
        let (wire, listed) = answer(&g, &req, locked_only).unwrap();
        assert_eq!(listed, 0);
        // Byte for byte the answer of a node with no resources at all.
        let (empty, _) = answer(&g, &req, &[]).unwrap();
        assert_eq!(wire, empty, "{key:?}");
        assert!(!wire.windows(6).any(|w| w == b"locked"));
    }
}

#[test]
fn a_tampered_answer_is_refused() {
    let g = Greeting::new([1; NONCE_LEN]);
    let req = request(&g, [2; NONCE_LEN], Some(K1)).unwrap();
    let (wire, _) = answer(&g, &req, &offers()).unwrap();
    let (body, tag) = split_answer(&wire);
    assert!(check_answer(&g, &req, body, &tag, Some(K1)).is_ok());
    // A flipped bit in the body (a fake server steering to another primary).
    let mut body2 = body.to_vec();
    let last = body2.len() - 1;
    body2[last] ^= 1;
    assert_eq!(
        check_answer(&g, &req, &body2, &tag, Some(K1)),
        Err(CheckError::BadTag)
    );
    // A flipped bit in the MAC.
    let mut tag2 = tag;
    tag2[0] ^= 1;
    assert_eq!(
        check_answer(&g, &req, body, &tag2, Some(K1)),
        Err(CheckError::BadTag)
    );
    // The MAC stripped: a client with a secret wants one.
    assert_eq!(
        check_answer(&g, &req, body, &NO_TAG, Some(K1)),
        Err(CheckError::Unauthenticated)
    );
    // Replayed to another connection (the client's nonce differs).
    let other = request(&g, [9; NONCE_LEN], Some(K1)).unwrap();
    assert_eq!(
        check_answer(&g, &other, body, &tag, Some(K1)),
        Err(CheckError::BadTag)
    );
    // Made with the next key while the client offered the current one.
    let t = Transcript::new(&g, &req);
    assert_eq!(
        check_answer(&g, &req, body, &t.server_tag(Some(K2), body), Some(K1)),
        Err(CheckError::BadTag)
    );
}

#[test]
fn neither_mac_can_be_reflected_or_replayed() {
    let g = Greeting::new([1; NONCE_LEN]);
    let req = request(&g, [2; NONCE_LEN], Some(K1)).unwrap();
    let t = Transcript::new(&g, &req);
    // The client's tag is no server tag over an empty body, and vice versa.
    assert!(!t.check_server(K1, &[], &req.tag));
    assert!(t.check_client([K1], &t.server_tag(Some(K1), &[])).is_none());
    // A recorded request against a fresh greeting opens nothing.
    let g2 = Greeting::new([4; NONCE_LEN]);
    assert!(Transcript::new(&g2, &req)
        .check_client([K1, K2], &req.tag)
        .is_none());
    // The all-zero tag never verifies, whatever the keys.
    assert!(t.check_client([K1, K2], &NO_TAG).is_none());
}

#[test]
fn versions() {
    let mut g = Greeting::new([1; NONCE_LEN]);
    g.version = 9;
    assert_eq!(
        request(&g, [2; NONCE_LEN], None),
        Err(CheckError::Version { theirs: 9 })
    );
    let g = Greeting::new([1; NONCE_LEN]);
    let mut req = request(&g, [2; NONCE_LEN], None).unwrap();
    req.version = 2;
    assert_eq!(
        answer(&g, &req, &offers()).map(|(_, n)| n),
        Err(CheckError::Version { theirs: 2 })
    );
}

#[test]
fn entries_round_trip() {
    let mut e = entry("r0", Role::Init);
    e.export = "export-0".into();
    e.status = Status::SplitBrain;
    e.epoch = u64::MAX;
    e.size = 0;
    e.nbd = vec![
        "tcp://[::1]:10809".into(),
        "x".repeat(NBD_ADDR_MAX),
        "tcp://10.0.0.1:1".into(),
        "tcp://h:2".into(),
    ];
    e.nbd_tls = true;
    let mut f = entry(&"n".repeat(NAME_MAX), Role::Secondary);
    f.status = Status::Degraded;
    f.nbd.clear();
    let mut g = entry("g", Role::Primary);
    g.status = Status::Inactive;
    let all = vec![e, f, g];
    let body = encode_body(&all).unwrap();
    assert_eq!(decode_body(&body).unwrap(), all);
    assert_eq!(decode_body(&encode_body(&[]).unwrap()).unwrap(), vec![]);
    // The most entries allowed fit in the largest body.
    let many: Vec<Entry> = (0..ENTRIES_MAX)
        .map(|i| entry(&format!("r{i}"), Role::Primary))
        .collect();
    let body = encode_body(&many).unwrap();
    assert!(body.len() <= ANSWER_MAX);
    assert_eq!(decode_body(&body).unwrap().len(), ENTRIES_MAX);
}

#[test]
fn encoder_limits() {
    let one = |f: &dyn Fn(&mut Entry)| {
        let mut e = entry("r", Role::Primary);
        f(&mut e);
        encode_body([&e])
    };
    assert!(one(&|e| e.name.clear()).is_err());
    assert!(one(&|e| e.name = "n".repeat(NAME_MAX + 1)).is_err());
    assert!(one(&|e| e.export = "n".repeat(NAME_MAX + 1)).is_err());
    assert!(one(&|e| e.nbd = vec!["a".into(); NBD_ADDRS_MAX + 1]).is_err());
    assert!(one(&|e| e.nbd = vec!["a".repeat(NBD_ADDR_MAX + 1)]).is_err());
    assert!(one(&|e| e.nbd = vec![String::new()]).is_err());
    let many: Vec<Entry> = (0..=ENTRIES_MAX)
        .map(|i| entry(&format!("r{i}"), Role::Primary))
        .collect();
    assert!(encode_body(&many).is_err());
}

/// Hand-made bodies: each malformed one is an error naming the problem.
#[test]
fn malformed_bodies() {
    let good = encode_body([&entry("r", Role::Primary)]).unwrap();
    // Offsets in `good`: count 0..2, name len 2, name 3, export len 4,
    // export 5, role 6, status 7, nbd_tls 8, epoch 9..17, size 17..25,
    // nbd count 25, first address length 26..28.
    let patched = |at: usize, v: u8| {
        let mut b = good.clone();
        b[at] = v;
        b
    };
    let mut too_many = good.clone();
    too_many[..2].copy_from_slice(&((ENTRIES_MAX + 1) as u16).to_le_bytes());
    let mut long_addr = good.clone();
    long_addr[26..28].copy_from_slice(&((NBD_ADDR_MAX + 1) as u16).to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "truncated"),
        ("count only", vec![1, 0], "truncated"),
        ("too many entries", too_many, "1025 entries"),
        ("empty name", patched(2, 0), "name of 0 bytes"),
        ("long name", patched(2, 65), "name of 65 bytes"),
        ("bad role", patched(6, 3), "unknown role 3"),
        ("bad status", patched(7, 4), "unknown status 4"),
        ("bad nbd_tls", patched(8, 2), "nbd_tls of 2"),
        ("too many addresses", patched(25, 5), "5 NBD addresses"),
        ("long address", long_addr, "NBD address of 257 bytes"),
        ("address past the end", patched(26, 200), "truncated"),
        ("bad UTF-8", patched(3, 0xff), "name is not UTF-8"),
        (
            "trailing",
            [good.as_slice(), &[0]].concat(),
            "1 trailing bytes",
        ),
        ("cut short", good[..good.len() - 1].to_vec(), "truncated"),
    ];
    for (what, body, want) in cases {
        match decode_body(&body) {
            Ok(e) => panic!("{what}: accepted {e:?}"),
            Err(e) => assert!(e.to_string().contains(want), "{what}: {e}"),
        }
    }
    assert!(decode_body(&vec![0; ANSWER_MAX + 1]).is_err());
}

#[test]
fn malformed_greetings_and_requests() {
    let g = Greeting::new([1; NONCE_LEN]).encode();
    assert!(Greeting::decode(&g[..GREETING_LEN - 1]).is_err());
    assert!(Greeting::decode(&[g.as_slice(), &[0]].concat()).is_err());
    // The replication protocol's frame magic is no discovery magic.
    let mut repl = g;
    repl[..4].copy_from_slice(&crate::MAGIC.to_le_bytes());
    let e = Greeting::decode(&repl).unwrap_err().to_string();
    assert!(e.contains("not a hastd discovery peer"), "{e}");
    let r = request(&Greeting::new([1; NONCE_LEN]), [2; NONCE_LEN], None)
        .unwrap()
        .encode();
    assert!(Request::decode(&r[..REQUEST_LEN - 1]).is_err());
    assert!(Request::decode(&g).is_err());
    let mut bad_magic = r;
    bad_magic[0] ^= 1;
    assert!(Request::decode(&bad_magic).is_err());
}

#[test]
fn answer_length_is_checked_before_allocating() {
    assert_eq!(
        decode_answer_len((ANSWER_MAX as u32).to_le_bytes()),
        Ok(ANSWER_MAX)
    );
    assert!(decode_answer_len((ANSWER_MAX as u32 + 1).to_le_bytes()).is_err());
    assert!(decode_answer_len(u32::MAX.to_le_bytes()).is_err());
}

proptest::proptest! {
    /// Whatever arrives, decoding never panics, and what decodes re-encodes
    /// to the same bytes.
    #[test]
    fn decoding_is_total_and_canonical(data in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
        if let Ok(entries) = decode_body(&data) {
            proptest::prop_assert_eq!(encode_body(&entries).unwrap(), data.clone());
        }
        if let Ok(g) = Greeting::decode(&data) {
            proptest::prop_assert_eq!(g.encode().to_vec(), data.clone());
        }
        if let Ok(r) = Request::decode(&data) {
            proptest::prop_assert_eq!(r.encode().to_vec(), data.clone());
        }
    }
}

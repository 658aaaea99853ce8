//! The authentication exchange as tables: who passes, who is refused, and
//! that nothing recorded can be replayed or reflected.

use super::*;

const K1: &[u8] = b"0123456789abcdef-current";
const K2: &[u8] = b"fedcba9876543210-next";
const K3: &[u8] = b"an-attackers-guess-0000";

fn challenge(n: u8) -> Challenge {
    Challenge::new([n; NONCE_LEN])
}

/// The primary's AUTH for `challenge`, made with `key`.
fn auth(ch: &Challenge, np: u8, key: Option<&[u8]>) -> Auth {
    let mut a = Auth {
        nonce: [np; NONCE_LEN],
        tag: NO_TAG,
        resource: "r0".into(),
        node: "nodea".into(),
    };
    a.tag = a.transcript(ch).primary_tag(key);
    a
}

/// One whole exchange: (secondary's verdict, primary's verdict).
fn exchange(
    p_offers: Option<&[u8]>,
    p_accepts: Option<&[&[u8]]>,
    s_accepts: Option<&[&[u8]]>,
) -> Result<String, AuthError> {
    let ch = challenge(7);
    let a = auth(&ch, 9, p_offers);
    let reply = answer(&ch, &a, s_accepts, "nodeb")?;
    check_reply(&ch, &a, &reply, p_accepts)
}

#[test]
fn who_passes() {
    type Case<'a> = (
        &'a str,
        Option<&'a [u8]>,
        Option<&'a [&'a [u8]]>,
        Option<&'a [&'a [u8]]>,
        Result<(), AuthError>,
    );
    let cases: &[Case] = &[
        ("same key", Some(K1), Some(&[K1]), Some(&[K1]), Ok(())),
        ("no secret on either side", None, None, None, Ok(())),
        // Rotation: the secondary already lists the next key.
        (
            "P offers current, S accepts current+next",
            Some(K1),
            Some(&[K1]),
            Some(&[K1, K2]),
            Ok(()),
        ),
        // Rotation: the primary already offers the next key, S has both.
        (
            "P offers next, S has both",
            Some(K2),
            Some(&[K2, K1]),
            Some(&[K1, K2]),
            Ok(()),
        ),
        (
            "wrong key",
            Some(K3),
            Some(&[K3]),
            Some(&[K1, K2]),
            Err(AuthError::BadTag),
        ),
        (
            "P without secret",
            None,
            None,
            Some(&[K1]),
            Err(AuthError::PeerHasNoSecret),
        ),
        // A secondary without a secret cannot prove anything to a primary with one.
        (
            "S without secret",
            Some(K1),
            Some(&[K1]),
            None,
            Err(AuthError::PeerHasNoSecret),
        ),
        // S matched with K2 and proves with K2; P must accept K2 as well.
        (
            "S proves with a key P does not accept",
            Some(K2),
            Some(&[K1]),
            Some(&[K2]),
            Err(AuthError::BadTag),
        ),
    ];
    for (name, offers, p_acc, s_acc, want) in cases {
        let got = exchange(*offers, *p_acc, *s_acc).map(|node| assert_eq!(node, "nodeb"));
        assert_eq!(&got, want, "{name}");
    }
}

#[test]
fn a_recorded_auth_fails_against_a_new_challenge() {
    let a = auth(&challenge(1), 9, Some(K1));
    assert_eq!(
        answer(&challenge(2), &a, Some(&[K1]), "nodeb"),
        Err(AuthError::BadTag)
    );
}

#[test]
fn a_recorded_reply_fails_for_a_new_primary_nonce() {
    // A fake secondary replays the real one's reply to an earlier connection.
    let ch = challenge(1);
    let old = auth(&ch, 9, Some(K1));
    let recorded = answer(&ch, &old, Some(&[K1]), "nodeb").unwrap();
    let new = auth(&ch, 10, Some(K1));
    assert_eq!(
        check_reply(&ch, &new, &recorded, Some(&[K1])),
        Err(AuthError::BadTag)
    );
}

#[test]
fn a_tag_cannot_be_reflected() {
    // The primary's own tag sent back as the secondary's proof.
    let ch = challenge(1);
    let a = auth(&ch, 9, Some(K1));
    let reflected = AuthReply::Ok {
        node: "nodea".into(),
        tag: a.tag,
    };
    assert_eq!(
        check_reply(&ch, &a, &reflected, Some(&[K1])),
        Err(AuthError::BadTag)
    );
}

#[test]
fn every_field_is_covered() {
    let ch = challenge(1);
    let a = auth(&ch, 9, Some(K1));
    let keys: &[&[u8]] = &[K1];
    let mut changed = Vec::new();
    let mut x = a.clone();
    x.resource = "r1".into();
    changed.push(("resource", x));
    let mut x = a.clone();
    x.node = "nodec".into();
    changed.push(("node", x));
    let mut x = a.clone();
    x.nonce[0] ^= 1;
    changed.push(("nonce", x));
    for (field, x) in changed {
        assert_eq!(
            answer(&ch, &x, Some(keys), "nodeb"),
            Err(AuthError::BadTag),
            "{field}"
        );
    }
    let other_version = Challenge {
        version: PROTOCOL_VERSION + 1,
        nonce: ch.nonce,
    };
    assert_eq!(
        answer(&other_version, &a, Some(keys), "nodeb"),
        Err(AuthError::BadTag)
    );
    // The secondary's name is covered by its tag.
    let reply = answer(&ch, &a, Some(keys), "nodeb").unwrap();
    let AuthReply::Ok { tag, .. } = reply else {
        panic!("refused")
    };
    let renamed = AuthReply::Ok {
        node: "nodex".into(),
        tag,
    };
    assert_eq!(
        check_reply(&ch, &a, &renamed, Some(keys)),
        Err(AuthError::BadTag)
    );
    assert_eq!(
        check_reply(&ch, &a, &AuthReply::Refused, Some(keys)),
        Err(AuthError::Refused)
    );
}

#[test]
fn codecs_round_trip_and_are_strict() {
    let ch = challenge(3);
    assert_eq!(Challenge::decode(&ch.encode()), Ok(ch));
    let a = auth(&ch, 4, Some(K1));
    assert_eq!(Auth::decode(&a.encode()), Ok(a.clone()));
    for r in [
        AuthReply::Ok {
            node: "nodeb".into(),
            tag: [5; MAC_LEN],
        },
        AuthReply::Refused,
    ] {
        assert_eq!(AuthReply::decode(&r.encode()), Ok(r));
    }
    let enc = a.encode();
    assert!(enc.len() <= AUTH_MAX);
    for bad in [
        &enc[..enc.len() - 1],
        &[enc.as_slice(), &[0]].concat()[..],
        &[],
    ] {
        assert!(Auth::decode(bad).is_err(), "{bad:?}");
    }
    let mut empty_name = a.encode();
    empty_name[64] = 0;
    assert!(Auth::decode(&empty_name).is_err());
    assert!(Challenge::decode(&[0; CHALLENGE_LEN - 1]).is_err());
    assert!(AuthReply::decode(&[2; 34]).is_err(), "unknown status");
    let mut refused = AuthReply::Refused.encode();
    refused[1] = 1;
    assert!(AuthReply::decode(&refused).is_err(), "a refusal with a tag");
}

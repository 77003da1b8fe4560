//! Recovery codes.

use keyward_auth::recovery;

#[test]
fn ten_distinct_codes_whose_digests_match_them_however_typed() {
    let (codes, digests) = recovery::generate();
    assert_eq!((codes.len(), digests.len()), (10, 10));
    let unique: std::collections::HashSet<_> = codes.iter().collect();
    assert_eq!(unique.len(), 10);
    for (c, d) in codes.iter().zip(&digests) {
        assert_eq!(c.len(), 19, "xxxx-xxxx-xxxx-xxxx: {c}");
        assert_eq!(&recovery::digest(c), d);
        assert_eq!(&recovery::digest(&c.to_uppercase().replace('-', " ")), d);
        assert!(
            !d.contains(&c.replace('-', "")),
            "only the digest is stored"
        );
    }
}

use std::io::Cursor;

use proptest::prelude::*;

use super::*;

/// Real `thin_delta` 0.9 output for two devices of a pool with
/// `data_block_size="128"` (64 KiB chunks): `tests/golden/thin/`.
const PLAIN: &str = include_str!("../../../tests/golden/thin/delta-plain.xml");
const VERBOSE: &str = include_str!("../../../tests/golden/thin/delta-verbose.xml");

fn parse(text: &str) -> Result<Vec<TrackedRun>, TrackError> {
    TrackedRuns::parse("test", Cursor::new(text.as_bytes().to_vec())).collect()
}

fn changed(offset: u64, len: u64) -> TrackedRun {
    TrackedRun {
        run: Run { offset, len },
        kind: TrackedKind::Changed,
    }
}

fn unmapped(offset: u64, len: u64) -> TrackedRun {
    TrackedRun {
        run: Run { offset, len },
        kind: TrackedKind::Unmapped,
    }
}

const K64: u64 = 64 * 1024;

#[test]
fn plain_and_verbose_thin_delta_output_give_the_same_runs() {
    let expected = vec![
        changed(2 * K64, K64),
        changed(5 * K64, K64),
        unmapped(10 * K64, K64),
    ];
    assert_eq!(parse(PLAIN).expect("must parse"), expected);
    assert_eq!(parse(VERBOSE).expect("must parse"), expected);
}

#[test]
fn touching_runs_of_one_kind_merge() {
    let xml = r#"<superblock data_block_size="8">
<diff left="1" right="2">
<different begin="0" length="1"/>
<right_only begin="1" length="2"/>
<left_only begin="3" length="1"/>
<left_only begin="4" length="1"/>
</diff></superblock>"#;
    assert_eq!(
        parse(xml).expect("must parse"),
        vec![changed(0, 3 * 4096), unmapped(3 * 4096, 2 * 4096)]
    );
}

#[test]
fn range_list_with_comments_hex_and_blank_lines() {
    let text = "# changed ranges\n\n0 4096\n4096 4096\n0x10000 0x200\n  \n1048576 1\n";
    assert_eq!(
        parse(text).expect("must parse"),
        vec![changed(0, 8192), changed(65536, 512), changed(1 << 20, 1)]
    );
}

#[test]
fn empty_inputs() {
    assert_eq!(parse("").expect("must parse"), vec![]);
    assert_eq!(parse("# nothing changed\n").expect("must parse"), vec![]);
    let empty_diff =
        r#"<superblock data_block_size="128"><diff left="1" right="2"></diff></superblock>"#;
    assert_eq!(parse(empty_diff).expect("must parse"), vec![]);
}

fn error_of(text: &str) -> String {
    match parse(text) {
        Ok(runs) => panic!("{text:?} parsed as {runs:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_inputs_are_rejected_with_a_line_number() {
    let cases: &[(&str, &str)] = &[
        ("0 4096\n8192\n", "line 2"),
        ("0 4096 7\n", "expected `OFFSET LENGTH`"),
        ("x 4096\n", "bad offset"),
        ("0 -1\n", "bad length"),
        ("18446744073709551615 2\n", "past 2^64"),
        ("8192 4096\n0 4096\n", "increasing"),
        ("0 8192\n4096 4096\n", "must not overlap"),
        (
            "<superblock><diff></diff></superblock>",
            "no data_block_size",
        ),
        (
            r#"<superblock data_block_size="0"><diff></diff></superblock>"#,
            "out of range",
        ),
        (
            r#"<superblock data_block_size="128"></superblock>"#,
            "no <diff>",
        ),
        (
            r#"<superblock data_block_size="128"><diff><different begin="1"/></diff></superblock>"#,
            "no length",
        ),
        (
            r#"<superblock data_block_size="128"><diff><different begin="x" length="1"/></diff></superblock>"#,
            "not a number",
        ),
        (
            r#"<superblock data_block_size="128"><diff><mystery/></diff></superblock>"#,
            "unexpected element",
        ),
        (
            r#"<superblock data_block_size="128"><diff><range begin="1" length="1"/></diff></superblock>"#,
            "<range> outside",
        ),
        (
            r#"<superblock data_block_size="128"><different begin="1" length="1"/></superblock>"#,
            "outside <diff>",
        ),
        (
            r#"<superblock data_block_size="128"><diff><different begin="1" length="1""#,
            "ends inside",
        ),
        (
            r#"<superblock data_block_size="128"><diff>text</diff></superblock>"#,
            "text outside",
        ),
        (
            r#"<superblock data_block_size="128"><diff><different begin="4" length="1"/><right_only begin="2" length="1"/></diff></superblock>"#,
            "increasing",
        ),
        (
            r#"<superblock data_block_size="128"><diff><different begin="18446744073709551615" length="1"/></diff></superblock>"#,
            "64-bit",
        ),
    ];
    for (text, needle) in cases {
        let e = error_of(text);
        assert!(e.contains(needle), "{text:?}: {e:?} lacks {needle:?}");
        assert!(!e.contains('\n'), "{e:?}");
    }
}

#[test]
fn a_failed_stream_stops_after_its_error() {
    let mut runs = TrackedRuns::parse("t", Cursor::new(b"0 1\nbad\n5 1\n".to_vec()));
    assert!(matches!(
        runs.next(),
        Some(Err(TrackError::Parse { line: 2, .. }))
    ));
    assert!(runs.next().is_none());
}

proptest! {
    /// Any increasing list of runs survives being written as a range list
    /// or as thin_delta XML, merged where runs touch.
    #[test]
    fn written_runs_parse_back(
        gaps in proptest::collection::vec((0u64..4, 1u64..5, any::<bool>()), 0..40),
        sectors in prop::sample::select(vec![8u64, 128, 1024, 4096]),
    ) {
        let chunk = sectors * 512;
        let mut at = 0;
        let mut raw = Vec::new();
        for (gap, len, gone) in gaps {
            at += gap;
            raw.push((at, len, gone));
            at += len;
        }
        let mut expected: Vec<TrackedRun> = Vec::new();
        for &(begin, len, gone) in &raw {
            let kind = if gone { TrackedKind::Unmapped } else { TrackedKind::Changed };
            let run = TrackedRun { run: Run { offset: begin * chunk, len: len * chunk }, kind };
            match expected.last_mut() {
                Some(p) if p.kind == kind && p.run.end() == run.run.offset => p.run.len += run.run.len,
                _ => expected.push(run),
            }
        }
        let mut xml = format!("<superblock uuid=\"\" data_block_size=\"{sectors}\">\n<diff left=\"1\" right=\"2\">\n");
        for &(begin, len, gone) in &raw {
            let name = if gone { "left_only" } else if begin % 2 == 0 { "different" } else { "right_only" };
            xml.push_str(&format!("  <{name} begin=\"{begin}\" length=\"{len}\"/>\n"));
        }
        xml.push_str("</diff>\n</superblock>\n");
        prop_assert_eq!(parse(&xml).expect("must parse"), expected.clone());

        let changed_only: Vec<TrackedRun> = {
            let mut v: Vec<TrackedRun> = Vec::new();
            for &(begin, len, _) in &raw {
                let run = changed(begin * chunk, len * chunk);
                match v.last_mut() {
                    Some(p) if p.run.end() == run.run.offset => p.run.len += run.run.len,
                    _ => v.push(run),
                }
            }
            v
        };
        let list: String = raw.iter().map(|&(b, l, _)| format!("{} {}\n", b * chunk, l * chunk)).collect();
        prop_assert_eq!(parse(&list).expect("must parse"), changed_only);
    }

    /// Arbitrary bytes never panic the parser.
    #[test]
    fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = TrackedRuns::parse("t", Cursor::new(bytes)).take(1000).count();
    }
}

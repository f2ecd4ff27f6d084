use super::*;

/// `lvs --noheadings --nameprefixes --unquoted --units b --nosuffix -o
/// vg_name,lv_name,pool_lv,thin_id,lv_size,chunk_size,segtype` as LVM
/// 2.03 prints it for a thin snapshot, its origin's pool, and (quoted form,
/// without `--unquoted`) a volume whose names contain dashes.
const LVS_THIN: &str =
    "  LVM2_VG_NAME=vg0 LVM2_LV_NAME=snap1 LVM2_POOL_LV=pool0 LVM2_THIN_ID=2 LVM2_LV_SIZE=2147483648 LVM2_CHUNK_SIZE=0 LVM2_SEGTYPE=thin\n";
const LVS_POOL: &str =
    "  LVM2_VG_NAME=vg0 LVM2_LV_NAME=pool0 LVM2_POOL_LV= LVM2_THIN_ID= LVM2_LV_SIZE=10737418240 LVM2_CHUNK_SIZE=65536 LVM2_SEGTYPE=thin-pool\n";
const LVS_QUOTED: &str =
    "  LVM2_VG_NAME='my-vg' LVM2_LV_NAME='root snap' LVM2_POOL_LV='thin-pool' LVM2_THIN_ID='7' LVM2_LV_SIZE='4294967296' LVM2_CHUNK_SIZE='0' LVM2_SEGTYPE='thin'\n";
const LVS_LINEAR: &str =
    "  LVM2_VG_NAME=vg0 LVM2_LV_NAME=swap LVM2_POOL_LV= LVM2_THIN_ID= LVM2_LV_SIZE=1073741824 LVM2_CHUNK_SIZE=0 LVM2_SEGTYPE=linear\n";

#[test]
fn lvs_outputs_parse() {
    let thin = parse_lvs(LVS_THIN).expect("must parse");
    assert_eq!(
        thin,
        LvInfo {
            vg: "vg0".into(),
            lv: "snap1".into(),
            pool: "pool0".into(),
            thin_id: Some(2),
            size: 2 << 30,
            chunk_size: 0,
            segtype: "thin".into(),
        }
    );
    let pool = parse_lvs(LVS_POOL).expect("must parse");
    assert_eq!(pool.chunk_size, 65536);
    assert_eq!(pool.thin_id, None);
    assert_eq!(pool.segtype, "thin-pool");
    let quoted = parse_lvs(LVS_QUOTED).expect("must parse");
    assert_eq!(quoted.lv, "root snap");
    assert_eq!(quoted.vg, "my-vg");
    assert_eq!(quoted.thin_id, Some(7));
    assert!(parse_lvs("").is_err());
    assert!(parse_lvs("  garbage\n").is_err());
    assert!(
        parse_lvs("  LVM2_VG_NAME=vg0 LVM2_LV_NAME=x LVM2_LV_SIZE=big\n")
            .expect_err("must fail")
            .contains("not a number")
    );
}

#[test]
fn pairs_must_be_thin_volumes_of_one_pool() {
    let old = parse_lvs(LVS_THIN).expect("must parse");
    let mut new = old.clone();
    new.lv = "snap2".into();
    new.thin_id = Some(3);
    let pool = parse_lvs(LVS_POOL).expect("must parse");
    let pair = check_pair(old.clone(), new.clone(), pool.clone()).expect("must parse");
    assert_eq!(pair.pool.chunk_size, 65536);
    let linear = parse_lvs(LVS_LINEAR).expect("must parse");
    assert!(check_pair(linear, new.clone(), pool.clone())
        .expect_err("must fail")
        .contains("not a thin volume"));
    let mut other = new.clone();
    other.pool = "pool1".into();
    assert!(check_pair(old.clone(), other, pool.clone())
        .expect_err("must fail")
        .contains("not in one thin pool"));
    assert!(
        check_pair(old, new, parse_lvs(LVS_LINEAR).expect("must parse"))
            .expect_err("must fail")
            .contains("not a thin pool")
    );
}

#[test]
fn command_lines() {
    assert_eq!(
        lvs_args("vg0/snap1"),
        [
            "--noheadings",
            "--nameprefixes",
            "--unquoted",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "vg_name,lv_name,pool_lv,thin_id,lv_size,chunk_size,segtype",
            "vg0/snap1"
        ]
    );
    assert_eq!(
        metadata_snap_args("my-vg", "thin-pool", true),
        [
            "message",
            "my--vg-thin--pool-tpool",
            "0",
            "reserve_metadata_snap"
        ]
    );
    assert_eq!(
        metadata_snap_args("vg0", "pool0", false),
        ["message", "vg0-pool0-tpool", "0", "release_metadata_snap"]
    );
    assert_eq!(
        metadata_device("my-vg", "pool0"),
        PathBuf::from("/dev/mapper/my--vg-pool0_tmeta")
    );
    let source = ThinSource {
        metadata: "/dev/mapper/vg0-pool0_tmeta".into(),
        old_id: 1,
        new_id: 2,
        metadata_snap: true,
    };
    assert_eq!(
        thin_delta_args(&source),
        [
            "-m",
            "--snap1",
            "1",
            "--snap2",
            "2",
            "/dev/mapper/vg0-pool0_tmeta"
        ]
    );
    let file = ThinSource {
        metadata_snap: false,
        ..source
    };
    assert_eq!(thin_delta_args(&file)[0], "--snap1");
}

#[test]
fn volume_names() {
    assert_eq!(vg_lv_of("vg0/snap1").expect("must parse"), "vg0/snap1");
    assert_eq!(vg_lv_of("/dev/vg0/snap1").expect("must parse"), "vg0/snap1");
    assert_eq!(
        vg_lv_of("/dev/mapper/my--vg-root--snap").expect("must parse"),
        "my-vg/root-snap"
    );
    assert_eq!(
        vg_lv_of("/dev/mapper/vg0-lv").expect("must parse"),
        "vg0/lv"
    );
    assert!(vg_lv_of("/dev/sda").is_err());
    assert!(vg_lv_of("snap1").is_err());
    assert!(vg_lv_of("/dev/mapper/nodash").is_err());
    assert_eq!(dm_name("a-b", "c"), "a--b-c");
}

#[test]
fn thin_ids() {
    assert_eq!(parse_thin_ids("1,2").expect("must parse"), (1, 2));
    assert_eq!(parse_thin_ids(" 10 , 11 ").expect("must parse"), (10, 11));
    assert!(parse_thin_ids("1")
        .expect_err("must fail")
        .contains("OLD_ID,NEW_ID"));
    assert!(parse_thin_ids("a,2")
        .expect_err("must fail")
        .contains("not a thin device id"));
}

//! `diskdelta --version`: the version, and the format versions this build
//! reads and writes (from the library's constants, so they cannot drift).

use std::sync::OnceLock;

use diskdelta::format::{delta, pack, signature, snapshot};
use diskdelta::remote::deploy;

/// The text `--version` prints after the name.
pub fn long() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let reads: Vec<String> = delta::VERSIONS.iter().map(|v| format!("v{v}")).collect();
        let linked = match std::env::current_exe() {
            Ok(exe) if deploy::is_static(&exe) => "static",
            _ => "dynamic",
        };
        format!(
            "{version}\n\
             delta files: writes diskdelta v{dw} (v{d2}, v{d1} with --format diskdelta-v2, -v1) and diff-dd v2; \
             reads diskdelta {dr}, diff-dd v1 and v2, Python diff-dd 1.0.4\n\
             signatures: v{sig}\n\
             repository: writes format v{rp} (plain) and v{re} (encrypted); reads v{rp} and v{re} \
             (packs v{pp}/v{ps}, snapshots v{sn})\n\
             {proto}\n\
             build: {arch}-{os}, {linked}",
            version = env!("CARGO_PKG_VERSION"),
            dw = delta::VERSION,
            d1 = delta::VERSION_1,
            d2 = delta::VERSION_2,
            dr = reads.join(", "),
            sig = signature::VERSION,
            rp = diskdelta::repo::REPO_VERSION,
            re = diskdelta::repo::ENCRYPTED_REPO_VERSION,
            pp = pack::VERSION,
            ps = pack::SEALED_VERSION,
            sn = snapshot::VERSION,
            proto = deploy::protocol_line(),
            arch = std::env::consts::ARCH,
            os = std::env::consts::OS,
        )
    })
}

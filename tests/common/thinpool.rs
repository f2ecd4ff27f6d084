//! A thin pool made of plain files: mappings chosen by the test, metadata
//! built by the real `thin_restore` from XML, volume images assembled
//! from the pool's data blocks exactly as device-mapper would present
//! them (unmapped blocks read as zeros).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A modelled thin pool.
pub struct ThinPool {
    /// Thin chunk size in 512-byte sectors (`data_block_size`).
    pub sectors: u64,
    /// Virtual size of every device, in thin chunks.
    pub blocks: u64,
    /// Contents of the data blocks, by data block number.
    data: Vec<Vec<u8>>,
    /// dev_id -> origin block -> data block.
    devices: BTreeMap<u64, BTreeMap<u64, u64>>,
    seed: u64,
}

impl ThinPool {
    /// An empty pool whose devices have `blocks` chunks of `sectors` sectors.
    pub fn new(sectors: u64, blocks: u64) -> ThinPool {
        ThinPool {
            sectors,
            blocks,
            data: Vec::new(),
            devices: BTreeMap::new(),
            seed: 1,
        }
    }

    /// Bytes per thin chunk.
    pub fn chunk(&self) -> u64 {
        self.sectors * 512
    }

    /// Virtual device size in bytes.
    pub fn size(&self) -> u64 {
        self.blocks * self.chunk()
    }

    /// Maps `origin` of `dev` to a new data block of fresh contents (the
    /// first quarter zeros, so zero runs inside data are exercised).
    pub fn write(&mut self, dev: u64, origin: u64) {
        assert!(origin < self.blocks);
        self.seed += 1;
        let mut content = super::pseudo_random(self.chunk() as usize, self.seed);
        let quarter = content.len() / 4;
        content[..quarter].fill(0);
        self.data.push(content);
        let data_block = self.data.len() as u64 - 1;
        self.devices
            .entry(dev)
            .or_default()
            .insert(origin, data_block);
    }

    /// Unmaps `origin` of `dev` (a discard).
    pub fn discard(&mut self, dev: u64, origin: u64) {
        self.devices.entry(dev).or_default().remove(&origin);
    }

    /// Makes `to` a snapshot of `from`: the same mappings.
    pub fn snapshot(&mut self, from: u64, to: u64) {
        let map = self.devices.get(&from).cloned().unwrap_or_default();
        self.devices.insert(to, map);
    }

    /// The device as a volume image.
    pub fn image(&self, dev: u64) -> Vec<u8> {
        let chunk = self.chunk() as usize;
        let mut out = vec![0u8; self.size() as usize];
        if let Some(map) = self.devices.get(&dev) {
            for (&origin, &data) in map {
                let at = origin as usize * chunk;
                out[at..at + chunk].copy_from_slice(&self.data[data as usize]);
            }
        }
        out
    }

    /// Thin chunks of `new` whose mapping differs from `old`'s (changed,
    /// new, or unmapped): what `thin_delta` reports.
    pub fn differing_blocks(&self, old: u64, new: u64) -> Vec<u64> {
        let empty = BTreeMap::new();
        let a = self.devices.get(&old).unwrap_or(&empty);
        let b = self.devices.get(&new).unwrap_or(&empty);
        (0..self.blocks).filter(|o| a.get(o) != b.get(o)).collect()
    }

    /// The pool's metadata as thin_restore XML.
    pub fn xml(&self) -> String {
        let mut x = format!(
            "<superblock uuid=\"\" time=\"1\" transaction=\"1\" flags=\"0\" version=\"2\" data_block_size=\"{}\" nr_data_blocks=\"{}\">\n",
            self.sectors,
            self.data.len().max(1) + 16
        );
        for (dev, map) in &self.devices {
            x.push_str(&format!(
                "  <device dev_id=\"{dev}\" mapped_blocks=\"{}\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n",
                map.len()
            ));
            for (origin, data) in map {
                x.push_str(&format!(
                    "    <single_mapping origin_block=\"{origin}\" data_block=\"{data}\" time=\"0\"/>\n"
                ));
            }
            x.push_str("  </device>\n");
        }
        x.push_str("</superblock>\n");
        x
    }

    /// Builds a binary metadata file in `dir` with the real
    /// `thin_restore`. Panics when thin-provisioning-tools is missing:
    /// `scripts/test` installs it.
    pub fn write_metadata(&self, dir: &Path) -> PathBuf {
        let xml = dir.join("metadata.xml");
        std::fs::write(&xml, self.xml()).expect("write metadata xml");
        let meta = dir.join("metadata.bin");
        std::fs::File::create(&meta)
            .and_then(|f| f.set_len(32 << 20))
            .expect("create metadata file");
        let out = Command::new("thin_restore")
            .arg("-i")
            .arg(&xml)
            .arg("-o")
            .arg(&meta)
            .output()
            .expect("thin_restore must be installed (thin-provisioning-tools, see scripts/lib/packages.sh)");
        assert!(
            out.status.success(),
            "thin_restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        meta
    }
}

//! `diskdelta status`

use diskdelta::repo::maintenance;
use diskdelta::units::human_bytes;

use crate::cli::StatusArgs;

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let repo = super::open_repo(&args.repo, false)?;
    let st = maintenance::status(&repo)?;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    println!("repository     {}", st.location);
    println!("chunk size     {}", human_bytes(u64::from(st.chunk_size)));
    println!("snapshots      {}", st.snapshots);
    println!("chunks         {}", st.chunks);
    println!("packs          {}", st.packs);
    println!("index files    {}", st.index_files);
    println!("logical size   {}", human_bytes(st.logical_bytes));
    println!("unique data    {}", human_bytes(st.unique_bytes));
    println!("stored size    {}", human_bytes(st.repository_bytes));
    println!("dedup ratio    {:.2}x", st.dedup_ratio);
    Ok(())
}

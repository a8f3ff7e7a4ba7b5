pub fn run(_s: Option<&std::path::Path>, _m: u64, _seed: u64) -> crate::CliResult {
    Ok(())
}

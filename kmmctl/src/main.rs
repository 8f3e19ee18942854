fn main() -> anyhow::Result<()> {
    anyhow::bail!("kmmctl: not implemented yet")
}

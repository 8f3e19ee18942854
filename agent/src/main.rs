fn main() -> anyhow::Result<()> {
    anyhow::bail!("kmm-agent: not implemented yet")
}

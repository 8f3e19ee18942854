fn main() -> anyhow::Result<()> {
    anyhow::bail!("kmm-controller: not implemented yet")
}

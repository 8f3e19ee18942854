use clap::Parser;

use super::*;
use crate::cli::{Cli, Command};

fn parse_with_flags(args: &[&str]) -> Result<(RolloutArgs, ClusterArgs), clap::Error> {
    let cli = Cli::try_parse_from(["kmmctl", "rollout"].iter().chain(args))?;
    match cli.command {
        Command::Rollout(r) => Ok((r, cli.cluster)),
        other => panic!("parsed as {other:?}"),
    }
}

fn parse(args: &[&str]) -> Result<RolloutArgs, clap::Error> {
    parse_with_flags(args).map(|(r, _)| r)
}

#[test]
fn the_namespace_may_come_before_or_after_the_subcommand() {
    for args in [
        &["-n", "drivers", "status", "r"][..],
        &["status", "r", "-n", "drivers"][..],
        &["status", "-n", "drivers", "r", "-o", "json"][..],
    ] {
        let (r, flags) = parse_with_flags(args).unwrap();
        assert_eq!(flags.namespace.as_deref(), Some("drivers"), "{args:?}");
        assert!(matches!(r.command, RolloutCommand::Status { ref rollout, .. } if rollout == "r"));
    }
}

#[test]
fn skip_needs_nodes_and_retry_needs_nodes_or_all_failed_but_not_both() {
    assert!(parse(&["skip", "r"]).is_err());
    let RolloutCommand::Skip { nodes, force, .. } =
        parse(&["skip", "r", "a", "b", "--force"]).unwrap().command
    else {
        panic!()
    };
    assert_eq!((nodes, force), (vec!["a".to_string(), "b".into()], true));
    assert!(parse(&["retry", "r"]).is_err());
    assert!(parse(&["retry", "r", "a", "--all-failed"]).is_err());
    let RolloutCommand::Retry {
        nodes, all_failed, ..
    } = parse(&["retry", "r", "--all-failed"]).unwrap().command
    else {
        panic!()
    };
    assert!(nodes.is_empty() && all_failed);
}

#[test]
fn errors_name_what_is_missing_and_what_was_refused() {
    let e = Error::NodesNotFound(vec!["a".into(), "b".into()]);
    assert_eq!(e.to_string(), "nodes not found: a, b (nothing changed)");
    let e = Error::ModuleNotFound {
        namespace: "ns".into(),
        name: "m".into(),
        rollout: "r".into(),
    };
    assert_eq!(
        e.to_string(),
        "module ns/m (spec.moduleName of modulerollout r) not found"
    );
    let e = Error::Refused {
        changed: "nothing changed".into(),
        reasons: vec![
            "node a is done, not failed".into(),
            "node b is required, not failed".into(),
        ],
    };
    assert_eq!(
        e.to_string(),
        "refused, nothing changed:\n  node a is done, not failed\n  node b is required, not failed"
    );
}

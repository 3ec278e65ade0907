//! Which paths an attempt may write, by the Project's rules ([`PathPolicy`]), on top of
//! the work tree's own safety checks ([`crate::git::checked_path`]): CI and automation
//! definitions and git hooks are protected unless the policy allows them, and a
//! Project's allow-list bounds everything else. What runs with the repository's secrets
//! (a workflow) or on people's machines (a hook) must not come from a model's answer
//! unless the Project says so.

use std::fmt::Write as _;

use aios_crds::project::PathPolicy;
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::{context::normal_path, work::PLAN_FILE};

/// The protected paths, as patterns, each with what it is.
pub const PROTECTED: &[(&str, &str)] = &[
    (".github/workflows/**", "a GitHub Actions workflow"),
    (".github/actions/**", "a GitHub Actions action"),
    (".gitlab-ci.yml", "GitLab CI's pipeline"),
    (".gitlab/**", "GitLab CI configuration"),
    (".circleci/**", "CircleCI configuration"),
    ("**/Jenkinsfile", "a Jenkins pipeline"),
    (".travis.yml", "Travis CI configuration"),
    (".drone.yml", "Drone CI configuration"),
    ("azure-pipelines.yml", "an Azure Pipelines pipeline"),
    ("bitbucket-pipelines.yml", "a Bitbucket Pipelines pipeline"),
    (".buildkite/**", "Buildkite configuration"),
    (".woodpecker.yml", "Woodpecker CI configuration"),
    (".woodpecker/**", "Woodpecker CI configuration"),
    (".githooks/**", "a git hook"),
    (".husky/**", "a git hook"),
    (".pre-commit-config.yaml", "git hook configuration"),
    (".aios/**", "AIOS's own file"),
];

/// Why a path is refused by the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It is a protected path the policy does not allow; what it is.
    Protected(&'static str),
    /// The policy has an allow-list and no pattern of it matches.
    NotAllowed,
}

/// The rules of one attempt.
#[derive(Debug)]
pub struct PathRules {
    protected: GlobSet,
    allow_protected: GlobSet,
    allowed: Option<GlobSet>,
    planning: bool,
}

/// A pattern as the rules compare it: on whole path components, without regard to case
/// (a checkout on a case-insensitive file system reads `.GitHub/Workflows` as
/// `.github/workflows`).
fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .case_insensitive(true)
        .build()
}

fn set<'a>(patterns: impl IntoIterator<Item = &'a str>, field: &str) -> Result<GlobSet, String> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(
            glob(pattern)
                .map_err(|e| format!("spec.policy.paths.{field}: the pattern {pattern:?}: {e}"))?,
        );
    }
    builder
        .build()
        .map_err(|e| format!("spec.policy.paths.{field}: {e}"))
}

impl PathRules {
    /// The rules `policy` sets for a task (`planning`: the planning task, which may write
    /// its plan, [`PLAN_FILE`]). The error names the pattern that is not a glob.
    pub fn new(policy: &PathPolicy, planning: bool) -> Result<Self, String> {
        Ok(Self {
            protected: set(PROTECTED.iter().map(|(p, _)| *p), "protected")?,
            allow_protected: set(
                policy.allow_protected.iter().map(String::as_str),
                "allowProtected",
            )?,
            allowed: if policy.allowed.is_empty() {
                None
            } else {
                Some(set(policy.allowed.iter().map(String::as_str), "allowed")?)
            },
            planning,
        })
    }

    /// Whether the attempt may write `path` (as the model wrote it: it is compared in
    /// its normal form, without `.` and empty components).
    pub fn check(&self, path: &str) -> Result<(), Refusal> {
        let path = normal_path(path);
        if self.planning && path == PLAN_FILE {
            return Ok(());
        }
        if let Some(index) = self.protected.matches(&path).first()
            && !self.allow_protected.is_match(&path)
        {
            return Err(Refusal::Protected(PROTECTED[*index].1));
        }
        match &self.allowed {
            Some(allowed) if !allowed.is_match(&path) => Err(Refusal::NotAllowed),
            _ => Ok(()),
        }
    }

    /// What the prompt tells the model of the rules `policy` sets.
    pub fn describe(policy: &PathPolicy) -> String {
        let mut text = String::from(
            "Do not write CI or automation definitions, git hooks or AIOS's files \
             (.github/workflows, .gitlab-ci.yml, Jenkinsfile, .husky, .aios and the like)",
        );
        if !policy.allow_protected.is_empty() {
            let _ = write!(
                text,
                ", except {}, which this Project allows",
                policy.allow_protected.join(", ")
            );
        }
        text.push('.');
        if !policy.allowed.is_empty() {
            let _ = write!(
                text,
                " Write only paths matching {}.",
                policy.allowed.join(", ")
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allowed: &[&str], allow_protected: &[&str], planning: bool) -> PathRules {
        PathRules::new(
            &PathPolicy {
                allowed: allowed.iter().map(|s| (*s).to_owned()).collect(),
                allow_protected: allow_protected.iter().map(|s| (*s).to_owned()).collect(),
            },
            planning,
        )
        .unwrap()
    }

    #[test]
    fn ci_definitions_hooks_and_aios_files_are_protected_by_default() {
        let r = rules(&[], &[], false);
        for (path, what) in [
            (".github/workflows/x.yml", "a GitHub Actions workflow"),
            (
                "./.github//workflows/deep/x.yaml",
                "a GitHub Actions workflow",
            ),
            (".GitHub/Workflows/x.yml", "a GitHub Actions workflow"),
            (
                ".github/actions/setup/action.yml",
                "a GitHub Actions action",
            ),
            (".gitlab-ci.yml", "GitLab CI's pipeline"),
            (".circleci/config.yml", "CircleCI configuration"),
            ("Jenkinsfile", "a Jenkins pipeline"),
            ("ci/Jenkinsfile", "a Jenkins pipeline"),
            (".husky/pre-commit", "a git hook"),
            (".githooks/pre-push", "a git hook"),
            (".pre-commit-config.yaml", "git hook configuration"),
            (".aios/plan.json", "AIOS's own file"),
        ] {
            assert_eq!(r.check(path), Err(Refusal::Protected(what)), "{path}");
        }
        for path in [
            "src/app.py",
            ".github/CODEOWNERS",
            "docs/workflows/x.yml",
            "Jenkinsfile.md",
            "README.md",
        ] {
            assert_eq!(r.check(path), Ok(()), "{path}");
        }
    }

    #[test]
    fn the_planner_writes_its_plan_and_nothing_else_of_aios() {
        let r = rules(&[], &[], true);
        assert_eq!(r.check(".aios/plan.json"), Ok(()));
        assert_eq!(
            r.check(".aios/other.json"),
            Err(Refusal::Protected("AIOS's own file"))
        );
        assert!(
            rules(&[], &[], false).check(".aios/plan.json").is_err(),
            "a work task may not rewrite the plan"
        );
    }

    #[test]
    fn a_policy_allows_protected_paths_and_bounds_the_rest() {
        let r = rules(&[], &[".github/workflows/**"], false);
        assert_eq!(r.check(".github/workflows/ci.yml"), Ok(()));
        assert!(r.check(".gitlab-ci.yml").is_err(), "only what it names");

        let r = rules(&["src/**", "*.md"], &[], false);
        assert_eq!(r.check("src/a/b.py"), Ok(()));
        assert_eq!(r.check("README.md"), Ok(()));
        assert_eq!(
            r.check("docs/guide.md"),
            Err(Refusal::NotAllowed),
            "* stays in its directory"
        );
        assert_eq!(r.check("setup.py"), Err(Refusal::NotAllowed));
        assert!(
            matches!(
                rules(&["**"], &[], false).check(".github/workflows/x.yml"),
                Err(Refusal::Protected(_))
            ),
            "an allow-list does not open the protected paths"
        );
    }

    #[test]
    fn a_pattern_that_is_not_a_glob_is_named() {
        let err = PathRules::new(
            &PathPolicy {
                allowed: vec!["src/[".to_owned()],
                allow_protected: Vec::new(),
            },
            false,
        )
        .unwrap_err();
        assert!(
            err.contains("spec.policy.paths.allowed") && err.contains("src/["),
            "{err}"
        );
    }
}

//! Plan validation, fed arbitrary plans: a plan comes from a language model's answer
//! through an agent's event. No input may panic, and a plan that passes must be what
//! the operator relies on: the same tasks, each after every task it depends on.

#![no_main]

use std::collections::BTreeSet;

use aios_crds::{
    limits::{EXPLICIT_PLAN, HERA_PLAN},
    plan::validate_plan,
    project::PlannedTask,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tasks) = serde_json::from_slice::<Vec<PlannedTask>>(data) else {
        return;
    };
    let served: BTreeSet<String> = ["backend", "frontend", "qa"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    for (roles, limits) in [
        (None, &HERA_PLAN),
        (Some(&served), &HERA_PLAN),
        (None, &EXPLICIT_PLAN),
    ] {
        let Ok(plan) = validate_plan("fuzz", &tasks, roles, limits) else {
            continue;
        };
        let given: BTreeSet<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
        let kept: BTreeSet<&str> = plan.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(given, kept, "the plan keeps every task and adds none");
        assert_eq!(plan.tasks.len(), tasks.len(), "no task twice");
        let mut done = BTreeSet::new();
        for task in &plan.tasks {
            for dependency in &task.depends_on {
                assert!(
                    done.contains(dependency.as_str()),
                    "{} comes before its dependency {}",
                    task.name.as_str(),
                    dependency.as_str()
                );
            }
            done.insert(task.name.as_str());
        }
        if let Some(roles) = roles {
            assert!(plan.tasks.iter().all(|t| roles.contains(t.role.as_str())));
        }
    }
});

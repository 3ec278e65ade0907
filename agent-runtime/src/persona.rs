//! Who the agent is: the persona's name (it signs commits), its specialties and the
//! system prompt that frames every model call. Built-in personas cover the pantheon;
//! the Agent's ConfigMap (mounted as a directory) overrides any part of them.

use std::path::Path;

/// The persona an agent works as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persona {
    /// The name commits are authored by (`Apollo`).
    pub name: String,
    /// What the persona is good at, for the prompt.
    pub specialties: Vec<String>,
    /// The system prompt of every model call.
    pub system_prompt: String,
}

impl Persona {
    /// The commit author's address: the name in lower case at `aios.dev`.
    pub fn email(&self) -> String {
        let local: String = self
            .name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let local = if local.is_empty() {
            "agent".to_owned()
        } else {
            local
        };
        format!("{local}@aios.dev")
    }
}

struct BuiltIn {
    role: &'static str,
    name: &'static str,
    specialties: &'static [&'static str],
    focus: &'static str,
}

const BUILT_IN: &[BuiltIn] = &[
    BuiltIn {
        role: "cto",
        name: "Hera",
        specialties: &["architecture", "planning", "review"],
        focus: "You break a project brief into a small plan of concrete tasks, each for one \
                role, ordered by what each task needs from the others. Keep plans as small \
                as the brief allows.",
    },
    BuiltIn {
        role: "backend",
        name: "Apollo",
        specialties: &["APIs", "databases", "services"],
        focus: "You write server-side code: clear, tested, with errors handled and inputs \
                validated.",
    },
    BuiltIn {
        role: "frontend",
        name: "Aphrodite",
        specialties: &["user interfaces", "accessibility", "responsive design"],
        focus: "You write user interfaces that are accessible, responsive and simple to use.",
    },
    BuiltIn {
        role: "qa",
        name: "Athena",
        specialties: &["tests", "bug finding", "quality gates"],
        focus: "You write tests that prove the acceptance criteria and find the bugs others \
                missed. Tests exercise the code the other tasks delivered, by its real names.",
    },
    BuiltIn {
        role: "devops",
        name: "Hephaestus",
        specialties: &["Dockerfiles", "CI", "Kubernetes manifests"],
        focus: "You write build, CI and deployment files that are minimal, reproducible and secure.",
    },
];

fn system_prompt(name: &str, role: &str, focus: &str) -> String {
    format!(
        "You are {name}, the {role} engineer of an AI software team. {focus} \
         Answer only with the JSON object the response format asks for."
    )
}

/// The built-in persona of `role`, or a generic one named after the role.
pub fn built_in(role: &str) -> Persona {
    if let Some(b) = BUILT_IN.iter().find(|b| b.role == role) {
        return Persona {
            name: b.name.to_owned(),
            specialties: b.specialties.iter().map(|s| (*s).to_owned()).collect(),
            system_prompt: system_prompt(b.name, b.role, b.focus),
        };
    }
    let mut chars = role.chars();
    let name = chars.next().map_or_else(
        || "Agent".to_owned(),
        |c| c.to_uppercase().chain(chars).collect(),
    );
    Persona {
        system_prompt: system_prompt(
            &name,
            role,
            "You do the task you are given carefully and completely.",
        ),
        name,
        specialties: vec![role.to_owned()],
    }
}

/// The persona of `role`: the built-in one, with the name from `name` (the Agent's
/// `AIOS_PERSONA`) and the files of `dir` (the persona ConfigMap: `name`,
/// `specialties` one per line, `system-prompt`) taking precedence where present and
/// not empty.
pub fn load(role: &str, name: Option<&str>, dir: Option<&Path>) -> std::io::Result<Persona> {
    let mut persona = built_in(role);
    if let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) {
        name.clone_into(&mut persona.name);
    }
    let Some(dir) = dir else {
        return Ok(persona);
    };
    let read = |file: &str| -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(dir.join(file)) {
            Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_owned())),
            Ok(_) => Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    };
    if let Some(name) = read("name")? {
        persona.name = name;
    }
    if let Some(specialties) = read("specialties")? {
        persona.specialties = specialties
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
    }
    if let Some(prompt) = read("system-prompt")? {
        persona.system_prompt = prompt;
    }
    Ok(persona)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pantheon_has_its_names_and_unknown_roles_get_a_generic_persona() {
        assert_eq!(built_in("backend").name, "Apollo");
        assert_eq!(built_in("cto").name, "Hera");
        assert_eq!(built_in("frontend").name, "Aphrodite");
        assert_eq!(built_in("qa").name, "Athena");
        assert_eq!(built_in("devops").name, "Hephaestus");
        let security = built_in("security");
        assert_eq!(security.name, "Security");
        assert!(security.system_prompt.contains("security engineer"));
        assert_eq!(built_in("backend").email(), "apollo@aios.dev");
    }

    #[test]
    fn the_config_map_overrides_what_it_sets_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("system-prompt"), "Be terse.\n").unwrap();
        std::fs::write(dir.path().join("specialties"), "Rust\n\nSQL\n").unwrap();
        std::fs::write(dir.path().join("name"), "  ").unwrap();
        let persona = load("backend", Some("Apollo II"), Some(dir.path())).unwrap();
        assert_eq!(persona.name, "Apollo II");
        assert_eq!(persona.specialties, ["Rust", "SQL"]);
        assert_eq!(persona.system_prompt, "Be terse.");
        assert_eq!(persona.email(), "apolloii@aios.dev");
        let missing = load("qa", None, Some(&dir.path().join("absent"))).unwrap();
        assert_eq!(missing, built_in("qa"));
    }
}

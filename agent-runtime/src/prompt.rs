//! What the model is told: the persona's system prompt, then the brief, the task, its
//! acceptance criteria, what its dependencies delivered (with the files' contents, so
//! a test can call the code it tests) and related memories; and what it must answer.

use std::fmt::Write as _;

use aios_crds::bus::TaskDispatch;

use crate::{
    llm::{ChatMessage, Role},
    memory::Hit,
    persona::Persona,
};

/// A file a dependency delivered, as read from the work tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextFile {
    /// Its path in the repository.
    pub path: String,
    /// Its content.
    pub content: String,
}

/// The system message: the persona's prompt and specialties.
pub fn system_message(persona: &Persona) -> ChatMessage {
    let mut text = persona.system_prompt.clone();
    if !persona.specialties.is_empty() {
        let _ = write!(
            text,
            "\nYour specialties: {}.",
            persona.specialties.join(", ")
        );
    }
    ChatMessage::new(Role::System, text)
}

fn push_section(text: &mut String, heading: &str, body: &str) {
    if !body.trim().is_empty() {
        let _ = write!(text, "\n## {heading}\n{}\n", body.trim());
    }
}

/// The user message of a dispatch.
pub fn task_message(
    dispatch: &TaskDispatch,
    files: &[ContextFile],
    memories: &[Hit],
) -> ChatMessage {
    let task = &dispatch.spec;
    let mut text = String::new();
    push_section(&mut text, "Project brief", &dispatch.brief);
    let _ = write!(
        text,
        "\n## Your task: {}\n{}\n",
        task.title,
        task.description.trim()
    );
    let criteria: Vec<String> = task
        .acceptance_criteria
        .iter()
        .map(|c| format!("- {c}"))
        .collect();
    push_section(&mut text, "Acceptance criteria", &criteria.join("\n"));
    let mut done = String::new();
    for dep in &dispatch.dependencies {
        let _ = writeln!(
            done,
            "### {} ({}): {}",
            dep.title,
            dep.role,
            dep.summary.trim()
        );
        if !dep.files.is_empty() {
            let _ = writeln!(done, "Files: {}", dep.files.join(", "));
        }
    }
    push_section(&mut text, "Work already delivered", &done);
    let mut shown = String::new();
    for file in files {
        let _ = writeln!(
            shown,
            "### {}\n```\n{}\n```",
            file.path,
            file.content.trim_end()
        );
    }
    push_section(&mut text, "Files in the repository you build on", &shown);
    let remembered: Vec<String> = memories
        .iter()
        .map(|hit| {
            format!(
                "- ({}) {}",
                hit.record.kind.as_str(),
                hit.record.text.trim()
            )
        })
        .collect();
    push_section(&mut text, "Related memories", &remembered.join("\n"));
    if task.planning {
        push_section(&mut text, "Answer", &planning_instructions(dispatch));
    } else {
        push_section(
            &mut text,
            "Answer",
            "Answer with a JSON object: \"summary\" (what you did, in a few sentences), \"files\" \
             (every file you write, each with \"path\" relative to the repository root and its whole \
             \"content\"), and optionally \"notes\". Write complete files, not fragments.",
        );
    }
    ChatMessage::new(Role::User, text)
}

fn planning_instructions(dispatch: &TaskDispatch) -> String {
    let mut text = String::from(
        "Plan the project as a JSON object with \"tasks\": a list of tasks, each with \"name\" (a short \
         lower-case identifier such as \"api\"), \"title\", \"role\", \"description\" (enough detail to do \
         it without asking), \"dependsOn\" (names of tasks in this plan that must finish first), \
         \"complexity\" (Low, Medium or High) and \"acceptanceCriteria\". Use as few tasks as the brief allows. \
         Each name appears once; \"dependsOn\" names only other tasks of this plan, never a role. \
         For example, a service and its tests: {\"tasks\": [{\"name\": \"service\", \"title\": \"Write the service\", \
         \"role\": \"backend\", \"description\": \"...\", \"dependsOn\": [], \"complexity\": \"Low\", \
         \"acceptanceCriteria\": [\"...\"]}, {\"name\": \"service-tests\", \"title\": \"Test the service\", \
         \"role\": \"qa\", \"description\": \"...\", \"dependsOn\": [\"service\"], \"complexity\": \"Low\", \
         \"acceptanceCriteria\": [\"...\"]}]}.",
    );
    if !dispatch.available_roles.is_empty() {
        let _ = write!(
            text,
            "\nRoles you may use: {}.",
            dispatch.available_roles.join(", ")
        );
    }
    if !dispatch.plan_feedback.is_empty() {
        let _ = write!(
            text,
            "\nThe previous plan was refused: {}. Fix that.",
            dispatch.plan_feedback.join("; ")
        );
    }
    text
}

/// The message asking the model to correct an answer that failed a check.
pub fn repair_message(problem: &str) -> ChatMessage {
    ChatMessage::new(
        Role::User,
        format!(
            "Your answer could not be used: {problem}. Answer again with the corrected JSON object only."
        ),
    )
}

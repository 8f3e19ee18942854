//! The node state in memory and on disk, changed only through [`Journal::update`]:
//! each transition is written before the kernel step it announces, so a crash
//! at any point leaves a record of what may have happened.

use std::sync::Mutex;

use crate::state::{NodeState, StateError, StateFile};

/// The node state and its file.
pub struct Journal {
    state: Mutex<NodeState>,
    file: StateFile,
}

impl Journal {
    /// A journal starting from `state`, saved to `file`.
    pub fn new(state: NodeState, file: StateFile) -> Self {
        Self {
            state: Mutex::new(state),
            file,
        }
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> NodeState {
        super::lock(&self.state).clone()
    }

    /// Applies `change` and saves; memory changes only once the file is written.
    ///
    /// # Errors
    /// If the state file cannot be written (the state stays as it was).
    pub fn update<R>(&self, change: impl FnOnce(&mut NodeState) -> R) -> Result<R, StateError> {
        let mut state = super::lock(&self.state);
        let mut next = state.clone();
        let out = change(&mut next);
        if next != *state {
            self.file.save(&next)?;
            *state = next;
        }
        Ok(out)
    }
}

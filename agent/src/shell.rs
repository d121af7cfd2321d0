//! The shell lines that `dpop-agent` prints for `eval`, in the two dialects ssh-agent speaks:
//! Bourne (`-s`, `VAR=value; export VAR;`) and C shell (`-c`, `setenv VAR value;`). Without a
//! flag, a `$SHELL` ending in `csh` (csh, tcsh) gets C shell lines, like ssh-agent.

use std::fmt::Write;
use std::path::Path;

/// Which shell the lines are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    /// sh, bash, zsh, dash, ksh.
    Bourne,
    /// csh, tcsh.
    C,
}

impl Shell {
    /// `-c` or `-s` when given, else guessed from `$SHELL`.
    pub fn choose(csh: bool, sh: bool) -> Shell {
        match (csh, sh) {
            (true, _) => Shell::C,
            (_, true) => Shell::Bourne,
            _ => Shell::from_env(std::env::var_os("SHELL").as_deref()),
        }
    }

    fn from_env(shell: Option<&std::ffi::OsStr>) -> Shell {
        match shell {
            Some(s) if s.to_string_lossy().ends_with("csh") => Shell::C,
            _ => Shell::Bourne,
        }
    }

    /// The lines that point clients at the agent on `socket` with process id `pid`.
    pub fn set_lines(self, socket: &Path, pid: u32) -> String {
        let sock = quote(&socket.to_string_lossy());
        let mut out = String::new();
        match self {
            Shell::Bourne => {
                let _ = writeln!(out, "DPOP_AUTH_SOCK={sock}; export DPOP_AUTH_SOCK;");
                let _ = writeln!(out, "DPOP_AGENT_PID={pid}; export DPOP_AGENT_PID;");
            }
            Shell::C => {
                let _ = writeln!(out, "setenv DPOP_AUTH_SOCK {sock};");
                let _ = writeln!(out, "setenv DPOP_AGENT_PID {pid};");
            }
        }
        let _ = writeln!(out, "echo Agent pid {pid};");
        out
    }

    /// The lines that forget a stopped agent.
    pub fn unset_lines(self, pid: i32) -> String {
        let unset = match self {
            Shell::Bourne => "unset",
            Shell::C => "unsetenv",
        };
        format!("{unset} DPOP_AUTH_SOCK;\n{unset} DPOP_AGENT_PID;\necho Agent pid {pid} killed;\n")
    }
}

/// Single-quoted for both dialects: `'` inside becomes `'\''`, which sh and csh both read
/// as an escaped quote between two quoted parts.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialects() {
        assert_eq!(Shell::from_env(Some("/bin/tcsh".as_ref())), Shell::C);
        assert_eq!(Shell::from_env(Some("/usr/bin/csh".as_ref())), Shell::C);
        assert_eq!(Shell::from_env(Some("/bin/bash".as_ref())), Shell::Bourne);
        assert_eq!(Shell::from_env(None), Shell::Bourne);
        assert_eq!(Shell::choose(true, false), Shell::C);
        assert_eq!(Shell::choose(false, true), Shell::Bourne);

        let sock = Path::new("/run/user/1000/it's/agent.sock");
        assert_eq!(
            Shell::Bourne.set_lines(sock, 42),
            "DPOP_AUTH_SOCK='/run/user/1000/it'\\''s/agent.sock'; export DPOP_AUTH_SOCK;\n\
             DPOP_AGENT_PID=42; export DPOP_AGENT_PID;\necho Agent pid 42;\n"
        );
        assert_eq!(
            Shell::C.set_lines(Path::new("/tmp/a.sock"), 7),
            "setenv DPOP_AUTH_SOCK '/tmp/a.sock';\nsetenv DPOP_AGENT_PID 7;\necho Agent pid 7;\n"
        );
        assert_eq!(
            Shell::C.unset_lines(7),
            "unsetenv DPOP_AUTH_SOCK;\nunsetenv DPOP_AGENT_PID;\necho Agent pid 7 killed;\n"
        );
    }
}

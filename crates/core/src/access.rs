//! Why the kernel refused predump access to a process (ptrace, process_vm_readv, a
//! /proc file): the kernel answers only EPERM, so the reason is worked out from what
//! it checks, in its order (kernel/ptrace.c `__ptrace_may_access`, then the security
//! modules: commoncap's capability subset, Yama): the caller's and the target's user
//! ids, CAP_SYS_PTRACE, Yama's ptrace_scope, the target's capabilities beside the
//! caller's. Reading the facts is apart from explaining them (`explain`).

use std::fs;

/// What the kernel weighs when one process asks to trace another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The caller's effective user id.
    pub euid: u32,
    /// The caller's effective and bounding capability sets (bit n: capability n).
    pub caller_effective: u64,
    pub caller_bounding: u64,
    /// /proc/sys/kernel/yama/ptrace_scope; None without Yama.
    pub yama: Option<u32>,
    /// The target's real, effective and saved user ids; None if unreadable.
    pub target_uids: Option<[u32; 3]>,
    /// The target's permitted capabilities; None if unreadable.
    pub target_permitted: Option<u64>,
    /// The caller runs in a user namespace that is neither the initial one nor
    /// (as far as can be read) the target's: the first line of its uid_map.
    /// None in the initial user namespace, or in the target's.
    pub caller_user_ns: Option<String>,
}

const CAP_SYS_PTRACE: u32 = 19;

/// Capability names by number (linux/capability.h), without the `cap_` prefix.
const CAP_NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// `cap_a, cap_b` for the bits of `set`.
fn cap_names(set: u64) -> String {
    (0..64)
        .filter(|bit| set & (1 << bit) != 0)
        .map(|bit| match CAP_NAMES.get(bit as usize) {
            Some(name) => format!("cap_{name}"),
            None => format!("capability {bit}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A field of a /proc/PID/status text (`Uid:`, `CapPrm:` …), its words.
fn status_field<'a>(status: &'a str, name: &str) -> Option<Vec<&'a str>> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|rest| rest.split_whitespace().collect())
}

fn hex_field(status: &str, name: &str) -> Option<u64> {
    u64::from_str_radix(status_field(status, name)?.first()?, 16).ok()
}

fn uids(status: &str) -> Option<[u32; 3]> {
    let f = status_field(status, "Uid")?;
    let n = |i: usize| f.get(i)?.parse::<u32>().ok();
    Some([n(0)?, n(1)?, n(2)?])
}

/// The facts of a refusal, from the status texts of the caller and the target.
pub fn parse_facts(own_status: &str, target_status: Option<&str>, yama: Option<u32>) -> Facts {
    Facts {
        euid: uids(own_status).map_or(u32::MAX, |u| u[1]),
        caller_effective: hex_field(own_status, "CapEff").unwrap_or(0),
        caller_bounding: hex_field(own_status, "CapBnd").unwrap_or(0),
        yama,
        target_uids: target_status.and_then(uids),
        target_permitted: target_status.and_then(|s| hex_field(s, "CapPrm")),
        caller_user_ns: None,
    }
}

/// The first line of a uid_map, unless it is the initial user namespace's (all of
/// 0..2^32-1 mapped onto itself).
pub fn own_user_ns(uid_map: &str) -> Option<String> {
    let first: Vec<&str> = uid_map.lines().next()?.split_whitespace().collect();
    (first != ["0", "0", "4294967295"]).then(|| first.join(" "))
}

/// The facts now, for a refusal of access to `pid`.
pub fn facts(pid: i32) -> Facts {
    let own = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let target = fs::read_to_string(format!("/proc/{pid}/status")).ok();
    let yama = fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let mut f = parse_facts(&own, target.as_deref(), yama);
    let ns = |p: &str| fs::read_link(format!("/proc/{p}/ns/user")).ok();
    let same_ns = matches!((ns("self"), ns(&pid.to_string())), (Some(a), Some(b)) if a == b);
    if !same_ns {
        f.caller_user_ns = fs::read_to_string("/proc/self/uid_map")
            .ok()
            .and_then(|m| own_user_ns(&m));
    }
    f
}

/// Why access to `pid` was refused: the facts read now, explained.
pub fn why_refused(pid: i32) -> String {
    explain(pid, &facts(pid))
}

/// Why access to `pid` was refused, as far as the facts tell, and what to do.
pub fn explain(pid: i32, f: &Facts) -> String {
    let ptrace = f.caller_effective & (1 << CAP_SYS_PTRACE) != 0;
    let root = f.euid == 0;
    let mut why = Vec::new();
    if f.yama == Some(3) {
        return "Yama's ptrace_scope is 3: no process may trace another until reboot".to_string();
    }
    if let Some(map) = &f.caller_user_ns {
        // The kernel's first check: capabilities count in the target's user namespace.
        why.push(format!(
            "predump runs in a user namespace of its own (uid_map {map}), in which its \
             {}capabilities{} count only for the processes of that namespace, and process \
             {pid} is outside it: run predump in the process's user namespace (on the host, or \
             entered with nsenter --user)",
            if root { "root and " } else { "" },
            if ptrace {
                ", CAP_SYS_PTRACE among them,"
            } else {
                ""
            }
        ));
    }
    if let Some(u) = f.target_uids {
        if !ptrace && u.iter().any(|&id| id != f.euid) {
            why.push(format!(
                "process {pid} runs as uid {} and predump as uid {}: run as root, or as uid {} \
                 (the same user in each of the process's real, effective and saved ids)",
                u[0], f.euid, u[0]
            ));
        }
    }
    match (f.yama, ptrace) {
        (Some(2), false) => why.push(
            "Yama's ptrace_scope is 2: only a tracer with CAP_SYS_PTRACE may trace, and \
             predump lacks it"
                .to_string(),
        ),
        (Some(1), false) if !root => why.push(
            "Yama's ptrace_scope is 1: without CAP_SYS_PTRACE predump may trace only its own \
             descendants (run it as root, or set /proc/sys/kernel/yama/ptrace_scope to 0)"
                .to_string(),
        ),
        _ => {}
    }
    let more = f.target_permitted.map_or(0, |p| p & !f.caller_effective);
    if !ptrace && more != 0 {
        why.push(format!(
            "process {pid} holds capabilities predump lacks ({}), and without CAP_SYS_PTRACE a \
             tracer may trace only a process whose capabilities are a subset of its own{}",
            cap_names(more),
            if root {
                " (predump runs as root without CAP_SYS_PTRACE: a container, setpriv or capsh \
                 took it away; give it back)"
            } else {
                ""
            }
        ));
    }
    if ptrace && why.is_empty() {
        let yama = match f.yama {
            None => "Yama is absent".to_string(),
            Some(n) => format!("Yama's ptrace_scope is {n}"),
        };
        let mut s = format!(
            "predump {}has CAP_SYS_PTRACE and {yama}, so the kernel's own ptrace rules allow \
             this: a security module (SELinux, AppArmor, Landlock) or the sandbox predump runs \
             in refused it",
            if root { "runs as root, " } else { "" }
        );
        let outside = f.target_permitted.map_or(0, |p| p & !f.caller_bounding);
        if outside != 0 {
            s.push_str(&format!(
                "; process {pid} holds capabilities outside predump's bounding set ({}): \
                 predump runs confined, with less privilege than process {pid}",
                cap_names(outside)
            ));
        }
        why.push(s);
    }
    if why.is_empty() {
        why.push(format!(
            "process {pid} may be non-dumpable (set-user-ID or set-capability, or \
             prctl(PR_SET_DUMPABLE, 0)), which only a tracer with CAP_SYS_PTRACE may trace: run \
             predump as root"
        ));
    }
    why.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_ALL: &str = "Name:\tnode\nUid:\t0\t0\t0\t0\nCapPrm:\t000001ffffffffff\n\
                            CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";
    /// Root in a container without CAP_SYS_RESOURCE (this machine's).
    const ROOT_CONFINED: &str = "Uid:\t0\t0\t0\t0\nCapPrm:\t000001fffeffffff\n\
                                 CapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n";
    const USER: &str = "Uid:\t1000\t1000\t1000\t1000\nCapPrm:\t0000000000000000\n\
                        CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\n";
    const ROOT_NO_PTRACE: &str = "Uid:\t0\t0\t0\t0\nCapPrm:\t000001fffff7ffff\n\
                                  CapEff:\t000001fffff7ffff\nCapBnd:\t000001fffff7ffff\n";

    #[test]
    fn root_with_cap_sys_ptrace_and_no_yama_is_refused_by_something_else() {
        let f = parse_facts(ROOT_CONFINED, Some(ROOT_ALL), None);
        assert_eq!(f.euid, 0);
        let why = explain(1, &f);
        assert!(why.starts_with(
            "predump runs as root, has CAP_SYS_PTRACE and Yama is absent, so the kernel's own \
             ptrace rules allow this: a security module"
        ));
        assert!(why.contains(
            "process 1 holds capabilities outside predump's bounding set (cap_sys_resource)"
        ));
        assert!(!why.contains("run as root"));
    }

    #[test]
    fn root_of_a_user_namespace_of_its_own_is_told_so() {
        assert_eq!(own_user_ns("         0          0 4294967295\n"), None);
        let map = own_user_ns("         0       1000          1\n");
        assert_eq!(map.as_deref(), Some("0 1000 1"));
        let f = Facts {
            caller_user_ns: map,
            ..parse_facts(ROOT_ALL, Some(ROOT_ALL), None)
        };
        let why = explain(1, &f);
        assert!(why.starts_with(
            "predump runs in a user namespace of its own (uid_map 0 1000 1), in which its root \
             and capabilities, CAP_SYS_PTRACE among them, count only for the processes of that \
             namespace, and process 1 is outside it"
        ));
        assert!(!why.contains("kernel's own ptrace rules allow"));
        assert!(!why.contains("run predump as root"));
    }

    #[test]
    fn another_user_is_told_to_run_as_root_or_as_the_owner() {
        let f = parse_facts(USER, Some(ROOT_ALL), Some(1));
        let why = explain(42, &f);
        assert!(why.starts_with(
            "process 42 runs as uid 0 and predump as uid 1000: run as root, or as uid 0"
        ));
        assert!(why.contains("Yama's ptrace_scope is 1: without CAP_SYS_PTRACE"));
        assert!(why.contains("holds capabilities predump lacks (cap_chown, "));
    }

    #[test]
    fn root_without_cap_sys_ptrace_against_a_more_privileged_process() {
        let f = parse_facts(ROOT_NO_PTRACE, Some(ROOT_ALL), None);
        let why = explain(7, &f);
        assert_eq!(
            why,
            "process 7 holds capabilities predump lacks (cap_sys_ptrace), and without \
             CAP_SYS_PTRACE a tracer may trace only a process whose capabilities are a subset \
             of its own (predump runs as root without CAP_SYS_PTRACE: a container, setpriv or \
             capsh took it away; give it back)"
        );
    }

    #[test]
    fn yama_3_and_2() {
        let f = parse_facts(ROOT_ALL, Some(ROOT_ALL), Some(3));
        assert!(explain(5, &f).starts_with("Yama's ptrace_scope is 3"));
        let f = parse_facts(ROOT_NO_PTRACE, Some(ROOT_NO_PTRACE), Some(2));
        assert!(explain(5, &f).starts_with("Yama's ptrace_scope is 2: only a tracer"));
    }

    #[test]
    fn same_user_same_caps_refused_means_not_dumpable() {
        let f = parse_facts(USER, Some(USER), None);
        assert!(explain(9, &f).starts_with("process 9 may be non-dumpable"));
    }

    #[test]
    fn capability_names() {
        assert_eq!(cap_names(1 << 24), "cap_sys_resource");
        assert_eq!(
            cap_names((1 << 19) | (1 << 40)),
            "cap_sys_ptrace, cap_checkpoint_restore"
        );
        assert_eq!(cap_names(1 << 45), "capability 45");
    }
}

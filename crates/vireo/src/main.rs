//! `vireo`: the command-line front end. It turns flags into a `VmConfig`,
//! picks how to run it (directly on /dev/kvm, or inside the nested emulation
//! rig when this host's KVM cannot run stock kernels) and reports the result
//! as one line and an exit status.

mod cli;
mod ctl;
mod firecracker;
mod rate;
mod relay;
mod size;

use std::process::ExitCode;

use clap::Parser;
use cli::{BenchCommand, Cli, Command, GuestCommand, RunArgs};
use rig::{EmulateMode, HostKvm};

/// Whether this binary was started under the name `firecracker` (a
/// symlink), where Firecracker's defaults apply even without flags.
fn invoked_as_firecracker() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n == "firecracker")
        })
        .unwrap_or(false)
}

/// Print one clear line and return the failure status.
pub(crate) fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("vireo: error: {msg}");
    ExitCode::from(1)
}

pub(crate) fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run(args: &RunArgs) -> ExitCode {
    let mut req = match args.to_request() {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if req.use_default_guest {
        let g = match guest::ensure_default_guest() {
            Ok(g) => g,
            Err(e) => return fail(format!("default guest: {e}")),
        };
        req.config.kernel = g.kernel;
        if req.config.initrd.is_none() {
            req.config.initrd = Some(g.initrd);
        }
        req.config.cmdline = format!("{} {}", guest::DEFAULT_GUEST_CMDLINE, req.config.cmdline)
            .trim()
            .to_string();
    }
    if !args.command.is_empty() {
        req.config.cmdline = format!(
            "{} {}",
            req.config.cmdline,
            guest::command_param(&args.command)
        )
        .trim()
        .to_string();
    }
    if let Err(e) = vmm::preflight(&req.config) {
        return fail(e);
    }

    let emulate = match args.emulate {
        EmulateMode::Never => false,
        EmulateMode::Always => true,
        EmulateMode::Auto => matches!(rig::probe_host_kvm(), HostKvm::Unusable(_)),
    };
    if emulate {
        let interactive = vmm::event_loop::console_is_interactive(&req.config.console);
        return match rig::run_nested(&req.config, interactive) {
            Ok(code) => exit_code(code),
            Err(e) => {
                eprintln!("vireo: error: {e}");
                exit_code(e.exit_code())
            }
        };
    }
    match vmm::run(&req.config) {
        Ok(reason) => {
            if let Some(msg) = reason.message() {
                eprintln!("vireo: {msg}");
            }
            exit_code(reason.exit_code())
        }
        Err(e) => fail(e),
    }
}

/// Run a benchmark against this very binary and print its table.
fn bench(cmd: BenchCommand) -> ExitCode {
    let vireo = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot find the vireo binary: {e}")),
    };
    let result = match cmd {
        BenchCommand::Boot { runs, rig } => {
            bench::run_boot_bench(&bench::BootBenchOptions { runs, vireo, rig })
        }
        BenchCommand::Block {
            runs,
            reps,
            random_ops,
            qemu_aio,
            qemu_machine,
            guest_kernel,
            no_warmup,
        } => bench::run_block_bench(&bench::BlockBenchOptions {
            runs,
            vireo,
            random_ops,
            reps,
            warmup: !no_warmup,
            qemu_aio,
            qemu_machine,
            guest_kernel,
        }),
        BenchCommand::Net {
            runs,
            reps,
            mib,
            round_trips,
            agent,
            qemu_machine,
            guest_kernel,
            no_warmup,
        } => bench::run_net_bench(&bench::NetBenchOptions {
            runs,
            reps,
            mib,
            rr: round_trips,
            warmup: !no_warmup,
            vireo,
            agent,
            qemu_machine,
            guest_kernel,
        }),
    };
    match result {
        Ok(table) => {
            println!("{table}");
            ExitCode::SUCCESS
        }
        // Interrupted: 128 + signal, like `vireo run`.
        Err(bench::BenchError::Rig(e)) => {
            eprintln!("vireo: error: rig: {e}");
            exit_code(e.exit_code())
        }
        Err(e) => fail(e),
    }
}

/// Wait (at most 2 s) until a terminal on stdout has taken what was
/// written to it out of its buffer. The nested rig runs Vireo in L1 with
/// stdout on L1's serial port, and L1 powers off as soon as Vireo exits:
/// without this the tail of the guest's console could still be queued
/// there. TIOCOUTQ only reads the queue length, so a background or
/// flow-stopped terminal neither stops nor holds Vireo.
fn drain_stdout() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: isatty only inspects fd 1.
    if unsafe { libc::isatty(1) } != 1 {
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ writes one int, `queued`, which outlives the call.
        let rc = unsafe { libc::ioctl(1, libc::TIOCOUTQ, &mut queued) };
        if rc != 0 || queued <= 0 || std::time::Instant::now() > deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn main() -> ExitCode {
    let code = dispatch();
    drain_stdout();
    code
}

fn dispatch() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        if cli.firecracker.requested() || invoked_as_firecracker() {
            return firecracker::main(&cli.firecracker);
        }
        let _ = <Cli as clap::CommandFactory>::command().print_help();
        return ExitCode::from(2);
    };
    match command {
        Command::Ctl(args) => ctl::main(&args),
        Command::Run(args) => run(&args),
        Command::Guest(GuestCommand::Build) => match guest::rebuild_default_guest() {
            Ok(g) => {
                println!("kernel: {}", g.kernel.display());
                println!("initrd: {}", g.initrd.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("default guest: {e}")),
        },
        Command::Bench(cmd) => bench(cmd),
        Command::Host => match rig::probe_host_kvm() {
            HostKvm::Usable => {
                println!("direct: /dev/kvm can run guests on this host");
                ExitCode::SUCCESS
            }
            HostKvm::Unusable(why) => {
                println!("emulated: {why}; `vireo run` uses the nested emulation rig");
                ExitCode::SUCCESS
            }
        },
    }
}

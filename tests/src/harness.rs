//! The real programs, loaded with a policy through the agent's own code path, run on
//! crafted frames with BPF_PROG_TEST_RUN.

use std::path::Path;

use agent_common::Action;
use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use portcullis::{
    enforcer::Enforcer,
    loader::{self, TC_EGRESS_PROGRAM, TC_PROGRAM, XDP_PROGRAM},
    maps::{BanMaps, Counters, DecisionMaps, KernelMaps, TelemetryMaps},
    policy::{self, Policy},
};

use crate::test_programs;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_SHOT: u32 = 2;
/// TC_ACT_UNSPEC (-1) as the kernel reports it.
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// The loaded programs, to run frames through: the agent's, and the test object's floor.
pub struct Programs {
    ebpf: Ebpf,
    test_programs: Ebpf,
}

/// The programs, the enforcer that writes their maps and the read-only maps telemetry
/// reads. The parts can be used from different threads (`programs` by reference,
/// `enforcer` by `&mut`).
pub struct Harness {
    pub programs: Programs,
    pub enforcer: Enforcer,
    pub bans: BanMaps,
    pub decisions: DecisionMaps,
    pub telemetry: TelemetryMaps,
}

impl Harness {
    /// Loads the programs with `policy_yaml` applied.
    pub fn new(policy_yaml: &str) -> Result<Self> {
        Self::from_policy(policy::parse(Path::new("test-policy.yaml"), policy_yaml)?)
    }

    /// Loads the programs with `policy` (validated, its lists merged) applied.
    pub fn from_policy(policy: Policy) -> Result<Self> {
        let mut ebpf = loader::load_unpinned(&policy.capacity)?;
        let maps = KernelMaps::take(&mut ebpf)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)? as u32;
        let enforcer = Enforcer::new(maps.policy, policy, cpus, None)?;
        let xdp: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .context("no XDP program")?
            .try_into()?;
        xdp.load()
            .context("the verifier rejected the XDP program")?;
        let tc: &mut SchedClassifier = ebpf
            .program_mut(TC_PROGRAM)
            .context("no TC program")?
            .try_into()?;
        tc.load().context("the verifier rejected the TC program")?;
        let egress: &mut SchedClassifier = ebpf
            .program_mut(TC_EGRESS_PROGRAM)
            .context("no TC egress program")?
            .try_into()?;
        egress
            .load()
            .context("the verifier rejected the TC egress program")?;
        Ok(Self {
            programs: Programs {
                ebpf,
                test_programs: test_programs::load(&[test_programs::FLOOR])?,
            },
            enforcer,
            bans: maps.bans,
            decisions: maps.decisions,
            telemetry: maps.telemetry,
        })
    }

    /// Replaces the policy, as a file reload would.
    pub fn apply(&mut self, policy_yaml: &str) -> Result<()> {
        let policy = policy::parse(Path::new("test-policy.yaml"), policy_yaml)?;
        self.enforcer.apply(policy)
    }

    pub fn xdp(&self, frame: &[u8]) -> Result<Action> {
        self.programs.xdp(frame)
    }

    pub fn tc(&self, frame: &[u8]) -> Result<Action> {
        self.programs.tc(frame)
    }

    pub fn xdp_out(&self, frame: &[u8]) -> Result<(Action, Vec<u8>)> {
        self.programs.xdp_out(frame)
    }

    pub fn tc_out(&self, frame: &[u8]) -> Result<(Action, Vec<u8>)> {
        self.programs.tc_out(frame)
    }

    /// Runs the TC egress program on `frame`, a segment leaving toward a client; it always
    /// lets the segment go (anything else is an error).
    pub fn egress(&self, frame: &[u8]) -> Result<()> {
        self.programs.egress(frame)
    }

    pub fn counters(&self) -> Result<Counters> {
        Ok(self.telemetry.counters()?)
    }
}

impl Programs {
    /// The XDP program `name`, from the agent's object or the test object.
    fn xdp_program(&self, name: &str) -> Result<&Xdp> {
        let program = self
            .ebpf
            .program(name)
            .or_else(|| self.test_programs.program(name))
            .with_context(|| format!("no program {name}"))?;
        Ok(program.try_into()?)
    }

    /// The file descriptor of one of the loaded XDP programs, to attach it by other means.
    pub fn fd(&self, program: &str) -> Result<std::os::fd::RawFd> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        Ok(self.xdp_program(program)?.fd()?.as_fd().as_raw_fd())
    }

    /// Runs `program` (an XDP program of the object) `repeat` times on `frame` and returns
    /// the kernel's average time per run, in nanoseconds.
    pub fn xdp_ns_per_run(&self, program: &str, frame: &[u8], repeat: u32) -> Result<f64> {
        let result = self
            .xdp_program(program)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..Default::default()
            })
            .map_err(|e| anyhow!("BPF_PROG_TEST_RUN x{repeat}: {e}"))?;
        Ok(result.duration.as_nanos() as f64)
    }

    /// As `xdp_ns_per_run`, for the TC egress program.
    pub fn egress_ns_per_run(&self, frame: &[u8], repeat: u32) -> Result<f64> {
        let program: &SchedClassifier = self
            .ebpf
            .program(TC_EGRESS_PROGRAM)
            .context("no TC egress program")?
            .try_into()?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..Default::default()
            })
            .map_err(|e| anyhow!("BPF_PROG_TEST_RUN (TC egress) x{repeat}: {e}"))?;
        Ok(result.duration.as_nanos() as f64)
    }

    /// Runs the XDP program once on `frame`.
    pub fn xdp(&self, frame: &[u8]) -> Result<Action> {
        Ok(self.xdp_out(frame)?.0)
    }

    /// Runs the XDP program once on `frame`: the verdict, and the frame as it left (a
    /// reset rewrites it into a RST).
    pub fn xdp_out(&self, frame: &[u8]) -> Result<(Action, Vec<u8>)> {
        let program: &Xdp = self
            .ebpf
            .program(XDP_PROGRAM)
            .context("no XDP program")?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .map_err(|e| anyhow!("BPF_PROG_TEST_RUN (XDP) on {} bytes: {e}", frame.len()))?;
        out.truncate(result.data_size_out as usize);
        let action = match result.return_value {
            XDP_PASS if out != frame => Action::Reset,
            XDP_PASS => Action::Pass,
            XDP_DROP => Action::Drop,
            other => bail!("XDP program returned {other}"),
        };
        Ok((action, out))
    }

    /// Runs the TC program once on `frame` (at least 14 bytes: the kernel refuses less).
    pub fn tc(&self, frame: &[u8]) -> Result<Action> {
        Ok(self.tc_out(frame)?.0)
    }

    /// Runs the TC egress program once on `frame`.
    pub fn egress(&self, frame: &[u8]) -> Result<()> {
        let program: &SchedClassifier = self
            .ebpf
            .program(TC_EGRESS_PROGRAM)
            .context("no TC egress program")?
            .try_into()?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..Default::default()
            })
            .map_err(|e| {
                anyhow!(
                    "BPF_PROG_TEST_RUN (TC egress) on {} bytes: {e}",
                    frame.len()
                )
            })?;
        match result.return_value {
            TC_ACT_UNSPEC => Ok(()),
            other => bail!("TC egress program returned {other}"),
        }
    }

    /// As `xdp_out`, through the TC program.
    pub fn tc_out(&self, frame: &[u8]) -> Result<(Action, Vec<u8>)> {
        let program: &SchedClassifier = self
            .ebpf
            .program(TC_PROGRAM)
            .context("no TC program")?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .map_err(|e| anyhow!("BPF_PROG_TEST_RUN (TC) on {} bytes: {e}", frame.len()))?;
        out.truncate(result.data_size_out as usize);
        let action = match result.return_value {
            TC_ACT_UNSPEC if out != frame => Action::Reset,
            TC_ACT_UNSPEC => Action::Pass,
            TC_ACT_SHOT => Action::Drop,
            other => bail!("TC program returned {other}"),
        };
        Ok((action, out))
    }
}

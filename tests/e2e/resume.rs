//! Crash and resume: a run killed with SIGKILL finishes on the next run
//! without redoing finished chunks; a changed component or spec refuses to
//! resume; a wrong or missing pin refuses to start.

use crate::both;
use crate::fixtures::*;
use crate::harness::*;

/// A spec for the `evil` guest in `slow` mode: correct output (uppercased
/// status), but each row burns CPU, so a run takes long enough to be killed
/// in the middle.
fn slow_spec(world: &World) -> String {
    spec(
        world,
        "evil",
        "config = { mode = \"slow\", spin = \"2000000\" }\nbatch_rows = 25\nfuel_per_row = 100000000",
        50,
        "status_v2",
    )
}

both!(
    sigkill_mid_run_resumes_without_redoing_chunks,
    |backend, name| {
        let w = World::new(backend, name);
        quotes(&w, 3000, false);
        w.write("spec.toml", &slow_spec(&w));

        let mut child = w.spawn(&["run", "spec.toml", "--execute"]);
        w.wait_for_chunks(&mut child, 3);
        // A second writer is refused while the first one works.
        let second = w.run(&["run", "spec.toml", "--execute"]);
        second.expect_code(2);
        assert!(
            second.stderr.contains("is being written by pid"),
            "{}",
            second.stderr
        );
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");

        let killed = w.status("spec.toml", None)[0].clone();
        let id = killed["run"]["run_id"]
            .as_str()
            .expect("run id")
            .to_string();
        assert_eq!(
            killed["run"]["status"], "running",
            "a killed run stays unfinished"
        );
        let before = w.status("spec.toml", Some(&id));
        let total_chunks = (1..=3000).filter(|&i| in_scope(i)).count().div_ceil(50);
        let done_before: Vec<serde_json::Value> = before["chunks"]
            .as_array()
            .expect("chunks")
            .iter()
            .filter(|c| c["status"] == "done")
            .cloned()
            .collect();
        assert!(
            done_before.len() >= 3 && done_before.len() < total_chunks,
            "killed mid-way: {} chunks done",
            done_before.len()
        );

        let ran = w.run(&["run", "spec.toml", "--execute"]);
        ran.expect_code(0);
        assert!(ran.stdout.contains("(resumed)"), "{}", ran.stdout);

        // Every in-scope row holds its uppercased status, every other row is untouched.
        for (id, v2) in status_v2(&w) {
            let expected = if in_scope(id) {
                status_of(id, false).map(str::to_uppercase)
            } else {
                Some("untouched".into())
            };
            assert_eq!(v2, expected, "row {id}");
        }

        let after = w.status("spec.toml", Some(&id));
        assert_eq!(after["run"]["status"], "done");
        let chunks = after["chunks"].as_array().expect("chunks");
        assert_eq!(chunks.len(), total_chunks);
        // Chunks finished before the kill were not processed again.
        for old in &done_before {
            let now = chunks
                .iter()
                .find(|c| c["chunk_id"] == old["chunk_id"])
                .expect("chunk still recorded");
            assert_eq!(now["attempts"], 1, "chunk {} was redone", old["chunk_id"]);
            assert_eq!(now["session_id"], old["session_id"]);
            assert_eq!(now["finished_at"], old["finished_at"]);
        }
        // The chunks tile the key range: each starts where the previous ended.
        for pair in chunks.windows(2) {
            assert_eq!(
                pair[1]["lo"], pair[0]["hi"],
                "chunks {} and {} leave a gap or overlap",
                pair[0]["chunk_id"], pair[1]["chunk_id"]
            );
        }
        assert!(chunks[0]["lo"].is_null());
        assert_eq!(
            chunks.last().expect("a chunk")["hi"],
            after["run"]["high_watermark"]
        );
        let rows: u64 = chunks
            .iter()
            .map(|c| c["counts"]["rows"].as_u64().expect("rows"))
            .sum();
        assert_eq!(rows, after["run"]["rows_in_scope"].as_u64().expect("scope"));
        let sessions = after["sessions"].as_array().expect("sessions");
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[0]["outcome"], "lost");
        assert_eq!(sessions[1]["outcome"], "done");
    }
);

both!(
    changed_component_or_spec_refuses_to_resume,
    |backend, name| {
        let w = World::new(backend, name);
        quotes(&w, 400, false);
        let original = remap_spec(&w, 50, "");
        w.write("spec.toml", &original);
        w.run(&["run", "spec.toml", "--execute", "--limit", "60"])
            .expect_code(0);

        // Same name, another component: evil reads and writes any value.
        let evil = plugin("evil");
        let swapped = original
            .replace(
                &plugin("remap").display().to_string(),
                &evil.display().to_string(),
            )
            .replace(&digest(&plugin("remap")), &digest(&evil))
            .replace(
                &format!("config = {{ map = \"{MAP}\" }}"),
                "config = { mode = \"slow\", spin = \"1\" }",
            );
        w.write("spec.toml", &swapped);
        let ran = w.run(&["run", "spec.toml", "--execute"]);
        ran.expect_code(2);
        assert!(ran.stderr.contains("cannot be resumed"), "{}", ran.stderr);
        assert!(
            ran.stderr.contains(&digest(&evil)) && ran.stderr.contains(&digest(&plugin("remap"))),
            "{}",
            ran.stderr
        );
        assert!(ran.stderr.contains("--restart"), "{}", ran.stderr);

        // Same component, another configuration.
        w.write("spec.toml", &original.replace("won=closed_won", "won=won"));
        let ran = w.run(&["run", "spec.toml", "--execute"]);
        ran.expect_code(2);
        assert!(
            ran.stderr.contains("the spec changed since it started"),
            "{}",
            ran.stderr
        );

        // Nothing beyond the canary's 60 rows was written by the refused runs.
        let changed = status_v2(&w)
            .into_iter()
            .filter(|(id, v)| in_scope(*id) && v.is_some())
            .count();
        let canary_changed = (1..=400)
            .filter(|&i| in_scope(i))
            .take(60)
            .filter(|&i| status_of(i, false).is_some())
            .count();
        assert_eq!(changed, canary_changed);

        // --restart abandons the old run and starts over.
        w.run(&["run", "spec.toml", "--execute", "--restart"])
            .expect_code(0);
        let runs = w.status("spec.toml", None);
        assert_eq!(runs[0]["run"]["status"], "done");
        assert_eq!(runs[1]["run"]["status"], "abandoned");
    }
);

both!(wrong_pin_refuses_to_start, |backend, name| {
    let w = World::new(backend, name);
    quotes(&w, 100, false);
    let good = remap_spec(&w, 50, "");
    w.write(
        "spec.toml",
        &good.replace(&digest(&plugin("remap")), &"0".repeat(64)),
    );
    let before = w.snapshot("quotes", "id, status_v2");
    let ran = w.run(&["run", "spec.toml", "--execute"]);
    ran.expect_code(2);
    assert!(
        ran.stderr
            .contains(&format!("but the spec pins {}", "0".repeat(64))),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("refusing to run it"), "{}", ran.stderr);
    // The dry run refuses the mismatched component too.
    w.run(&["run", "spec.toml"]).expect_code(2);
    assert_eq!(w.snapshot("quotes", "id, status_v2"), before);
    assert!(!w.state_exists(), "a state store was created");

    // Without a pin, a dry run works and says what to pin; --execute refuses.
    let unpinned: String = good
        .lines()
        .filter(|l| !l.starts_with("sha256"))
        .collect::<Vec<_>>()
        .join("\n");
    w.write("spec.toml", &unpinned);
    let dry = w.run(&["run", "spec.toml"]);
    dry.expect_code(0);
    assert!(dry.stdout.contains("not pinned"), "{}", dry.stdout);
    let ran = w.run(&["run", "spec.toml", "--execute"]);
    ran.expect_code(2);
    assert!(
        ran.stderr
            .contains(&format!("sha256 = \"{}\"", digest(&plugin("remap")))),
        "{}",
        ran.stderr
    );
    assert_eq!(w.snapshot("quotes", "id, status_v2"), before);
});

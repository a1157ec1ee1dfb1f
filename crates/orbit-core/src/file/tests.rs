use super::*;
use proptest::prelude::*;

fn errors(yaml: &str) -> Vec<(u64, String)> {
    match parse_pipeline("p.yaml", yaml) {
        Ok(p) => panic!("expected errors, parsed {p:?}"),
        Err(e) => e
            .diagnostics
            .into_iter()
            .map(|d| (d.line, d.message))
            .collect(),
    }
}

#[test]
fn parses_a_full_pipeline() {
    let p = parse_pipeline(
        "etl.yaml",
        r#"
name: etl
description: demo
defaults:
  retry: { max_attempts: 5, initial: 200ms }
  timeout: 1m
tasks:
  - name: extract
    type: shell
    command: ["echo", "hi"]
  - name: wait
    type: sleep
    duration: 10ms
    needs: extract
    priority: 5
  - name: call
    type: http
    url: "http://127.0.0.1:1/{{ input.id }}"
    method: post
    needs: [extract, wait]
    retry: { max_attempts: 1 }
    timeout: 5s
"#,
    )
    .unwrap();
    assert_eq!(p.name, "etl");
    assert_eq!(p.tasks.len(), 3);
    assert_eq!(p.tasks[0].retry.max_attempts, 5);
    assert_eq!(p.tasks[0].retry.initial, Duration::from_millis(200));
    assert_eq!(p.tasks[0].timeout, Some(Duration::from_secs(60)));
    assert_eq!(p.tasks[1].needs, vec!["extract"]);
    assert_eq!(p.tasks[1].priority, 5);
    assert_eq!(p.tasks[2].retry.max_attempts, 1);
    assert_eq!(
        p.tasks[2].retry.initial,
        Duration::from_millis(200),
        "task retry merges over defaults"
    );
    assert_eq!(p.tasks[2].timeout, Some(Duration::from_secs(5)));
    assert_eq!(p.tasks[2].params["method"], "post");
}

#[test]
fn a_cycle_names_its_tasks() {
    let e = errors(
        "name: c\ntasks:\n  - name: a\n    type: sleep\n    duration: 1s\n    needs: [c]\n  - name: b\n    type: sleep\n    duration: 1s\n    needs: [a]\n  - name: c\n    type: sleep\n    duration: 1s\n    needs: [b]\n",
    );
    assert_eq!(
        e,
        vec![(3, "tasks form a cycle: a -> b -> c -> a".to_string())]
    );
}

#[test]
fn unknown_needs_points_at_the_line() {
    let e = errors(
        "name: x\ntasks:\n  - name: a\n    type: sleep\n    duration: 1s\n    needs: [nope]\n",
    );
    assert_eq!(
        e,
        vec![(
            6,
            "task `a` needs `nope`, which is not a task in this pipeline".to_string()
        )]
    );
}

#[test]
fn duplicate_names_are_reported_with_both_lines() {
    let e = errors(
        "name: x\ntasks:\n  - name: a\n    type: sleep\n    duration: 1s\n  - name: a\n    type: sleep\n    duration: 2s\n",
    );
    assert_eq!(
        e,
        vec![(6, "task `a` is defined twice (first on line 3)".to_string())]
    );
}

#[test]
fn unknown_type() {
    let e = errors("name: x\ntasks:\n  - name: a\n    type: docker\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].0, 4);
    assert!(e[0].1.contains("unknown type `docker`"), "{e:?}");
}

#[test]
fn missing_required_parameter() {
    let e = errors("name: x\ntasks:\n  - name: a\n    type: shell\n    env: {A: 1}\n");
    assert_eq!(
        e,
        vec![(
            3,
            "task `a` (shell): missing required parameter `command`".to_string()
        )]
    );
    let e = errors("name: x\ntasks:\n  - name: a\n    type: http\n    method: GET\n");
    assert!(e[0].1.contains("missing required parameter `url`"), "{e:?}");
}

#[test]
fn unknown_parameter_points_at_its_key() {
    let e = errors(
        "name: x\ntasks:\n  - name: a\n    type: shell\n    command: [ls]\n    comand: [ls]\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].0, 6);
    assert!(e[0].1.contains("unknown parameter `comand`"), "{e:?}");
}

#[test]
fn unparsable_duration() {
    let e = errors(
        "name: x\ntasks:\n  - name: a\n    type: sleep\n    duration: 1s\n    timeout: soonish\n",
    );
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].0, 6);
    assert!(
        e[0].1.starts_with("`timeout`: `soonish` is not a duration"),
        "{e:?}"
    );
    let e = errors("name: x\ntasks:\n  - name: a\n    type: sleep\n    duration: forever\n");
    assert!(e[0].1.contains("`duration`"), "{e:?}");
}

#[test]
fn syntax_errors_carry_a_line() {
    let e = parse_pipeline(
        "bad.yaml",
        "name: x\ntasks:\n  - name: a\n   type: [unclosed\n",
    )
    .unwrap_err();
    assert!(e.diagnostics[0].line >= 3, "{e:?}");
    assert!(e.to_string().starts_with("bad.yaml:"), "{e}");
}

#[test]
fn several_errors_come_together_in_line_order() {
    let e = errors(
        "name: x\ntasks:\n  - name: a\n    type: nope\n  - name: b\n    type: sleep\n    duration: 1s\n    needs: [zz]\n",
    );
    assert_eq!(e.iter().map(|d| d.0).collect::<Vec<_>>(), vec![4, 8]);
}

#[test]
fn templated_values_are_checked_only_when_rendered() {
    parse_pipeline(
        "t.yaml",
        "name: t\ntasks:\n  - name: a\n    type: sleep\n    duration: \"{{ input.wait }}\"\n",
    )
    .unwrap();
}

#[test]
fn name_defaults_to_file_stem() {
    let p = parse_pipeline(
        "dir/nightly-report.yaml",
        "tasks:\n  - name: a\n    type: sleep\n    duration: 1s\n",
    )
    .unwrap();
    assert_eq!(p.name, "nightly-report");
}

const FRAGMENTS: &[&str] = &[
    "name: ",
    "tasks:\n",
    "  - ",
    "name: a\n",
    "type: shell\n",
    "type: sleep\n",
    "needs: [a, b]\n",
    "command: [ls]\n",
    "duration: 1s\n",
    "retry: {max_attempts: 0}\n",
    "    ",
    "{",
    "}",
    "[",
    "]",
    "&x ",
    "*x",
    "!!binary ",
    "'",
    "\"",
    ": ",
    "- ",
    "\n",
    "#",
    "~",
    "1e999",
    "-1",
    "timeout: 1h\n",
    "<<: *x\n",
    "? ",
    "|\n",
    "defaults:\n",
    "priority: 99999999999\n",
    "\t",
    "\u{feff}",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parser_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        let _ = parse_pipeline("fuzz.yaml", &text);
    }

    #[test]
    fn parser_never_panics_on_yaml_shaped_text(parts in proptest::collection::vec(0..FRAGMENTS.len(), 0..60)) {
        let text: String = parts.into_iter().map(|i| FRAGMENTS[i]).collect();
        if let Err(e) = parse_pipeline("fuzz.yaml", &text) {
            prop_assert!(!e.diagnostics.is_empty());
        }
    }
}

#[test]
fn allowed_next_must_name_tasks_that_need_this_one() {
    let ok = parse_pipeline(
        "r.yaml",
        "name: r\ntasks:\n  - name: pick\n    type: script\n    source: 'print(1)'\n    allowed_next: [a, b]\n  - {name: a, type: sleep, duration: 0s, needs: pick}\n  - {name: b, type: sleep, duration: 0s, needs: pick}\n",
    )
    .expect("valid");
    assert_eq!(ok.tasks[0].allowed_next, ["a", "b"]);
    let e = errors(
        "name: r\ntasks:\n  - name: pick\n    type: sleep\n    duration: 0s\n    allowed_next: [a, c]\n  - {name: a, type: sleep, duration: 0s, needs: pick}\n  - {name: c, type: sleep, duration: 0s}\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].0, 3);
    assert!(
        e[0].1
            .contains("`c`, which is not a task that needs `pick`"),
        "{e:?}"
    );
}

#[test]
fn worker_tasks_name_their_service_task_and_have_no_queue() {
    let p = parse_pipeline(
        "w.yaml",
        "name: w\ntasks:\n  - {name: charge, type: worker, task: payment, input: {id: '{{ input.id }}'}}\n  - {name: payment, type: worker}\n",
    )
    .expect("valid");
    assert_eq!(p.tasks[0].queue(), "payment");
    assert_eq!(p.tasks[1].queue(), "payment");
    let e = errors(
        "name: w\ntasks:\n  - {name: a, type: worker, queue: gpu}\n  - {name: b, type: worker, image: x}\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].1.contains("no `queue`"), "{e:?}");
    assert!(e[1].1.contains("unknown parameter `image`"), "{e:?}");
}

fn warnings(yaml: &str) -> Vec<(u64, String)> {
    super::parse_pipeline_with_warnings("w.yaml", yaml)
        .expect("valid")
        .1
        .into_iter()
        .map(|d| (d.line, d.message))
        .collect()
}

#[test]
fn shell_syntax_without_a_shell_is_a_warning_not_an_error() {
    let w = warnings(
        "name: w\ntasks:\n  - name: a\n    type: shell\n    command: 'make build && ./deploy.sh > out.log'\n  - name: b\n    type: shell\n    command: 'echo $HOME'\n",
    );
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(w[0].0, 5);
    assert!(
        w[0].1.contains("`&&`") && w[0].1.contains("did you mean `shell: true`"),
        "{w:?}"
    );
    assert!(w[1].1.contains("`$VAR`"), "{w:?}");
    // A template filter's `|` is no pipe; an argv list or a real shell is what was meant.
    assert!(
        warnings(
            "name: w\ntasks:\n  - {name: a, type: shell, command: \"echo {{ input.x | default('y') }}\"}\n  - {name: b, type: shell, command: ['sh', '-c', 'a | b']}\n  - {name: c, type: shell, shell: true, command: 'a | b > c'}\n"
        )
        .is_empty()
    );
}

#[test]
fn data_spliced_into_shell_code_is_a_warning() {
    let w = warnings(
        "name: w\ntasks:\n  - {name: up, type: sleep, duration: 0s}\n  - name: a\n    type: shell\n    shell: true\n    needs: up\n    command: 'curl -d {{ input.order }} x; echo {{ tasks.up.output }}'\n",
    );
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].1.contains("`input.order`") && w[0].1.contains("env"),
        "{w:?}"
    );
    // Through env, as the warning says: nothing to warn about.
    assert!(
        warnings(
            "name: w\ntasks:\n  - name: a\n    type: shell\n    shell: true\n    env: {ORDER: '{{ input.order }}'}\n    command: 'curl -d \"$ORDER\" x'\n"
        )
        .is_empty()
    );
}

#[test]
fn yaml_1_1_booleans_are_names_not_false() {
    let p = parse_pipeline(
        "b.yaml",
        "name: b\ntasks:\n  - {name: n, type: sleep, duration: 0s}\n  - {name: off, type: sleep, duration: 0s, needs: n}\n",
    )
    .expect("valid");
    assert_eq!(p.tasks[0].name, "n");
    assert_eq!(p.tasks[1].needs, ["n"]);
}

/// The Orbit-Py seed's workflow, exactly as its README shows it.
const ORBIT_PY: &str = r#"{
  "name": "Data Pipeline",
  "description": "ETL workflow with parallel processing",
  "tasks": [
    {
      "name": "extract",
      "action_type": "http_request",
      "action_payload": {"url": "https://api.example.com/data"},
      "dependencies": []
    },
    {
      "name": "transform",
      "action_type": "python_script",
      "action_payload": {"script": "transform.py"},
      "dependencies": ["extract"]
    },
    {
      "name": "load",
      "action_type": "shell_command",
      "action_payload": {"command": "load_data.sh"},
      "dependencies": ["transform"]
    }
  ]
}"#;

#[test]
fn orbit_py_workflows_are_pipelines() {
    let p = parse_pipeline("workflow.json", ORBIT_PY).expect("valid");
    assert_eq!(p.name, "data-pipeline");
    let kinds: Vec<_> = p.tasks.iter().map(|t| t.task_type).collect();
    assert_eq!(kinds, [TaskType::Http, TaskType::Script, TaskType::Shell]);
    assert_eq!(p.tasks[0].params["url"], "https://api.example.com/data");
    assert_eq!(p.tasks[1].params["file"], "transform.py");
    assert_eq!(p.tasks[1].needs, ["extract"]);
    assert_eq!(p.tasks[2].params["command"], "load_data.sh");
    assert_eq!(
        p.tasks[2].params["shell"], true,
        "a command string run by a shell"
    );
    let with_retries = ORBIT_PY.replace(
        r#""dependencies": []"#,
        r#""dependencies": [], "retry_count": 2, "timeout": 30, "id": "t-1""#,
    );
    let p = parse_pipeline("workflow.json", &with_retries).expect("valid");
    assert_eq!(p.tasks[0].retry.max_attempts, 3);
    assert_eq!(p.tasks[0].timeout, Some(std::time::Duration::from_secs(30)));
}

#[test]
fn orbit_py_mistakes_are_located_like_any_other() {
    let cyclic = ORBIT_PY.replace(r#""dependencies": []"#, r#""dependencies": ["load"]"#);
    let e = errors(&cyclic);
    assert!(e.iter().any(|(_, m)| m.contains("cycle")), "{e:?}");
    let missing = ORBIT_PY.replace(r#"["extract"]"#, r#"["extrakt"]"#);
    let e = errors(&missing);
    assert_eq!(e[0].0, 15, "{e:?}");
    assert!(e[0].1.contains("`extrakt`"), "{e:?}");
}

#[test]
fn orbit_py_task_types_work_in_orbit_files() {
    let p = parse_pipeline(
        "t.yaml",
        "name: t\ntasks:\n  - {name: a, type: shell_command, command: 'echo a | tr a b'}\n  - {name: b, type: python_script, script: b.py, needs: a}\n  - {name: c, type: http_request, url: 'http://x', needs: b}\n",
    )
    .expect("valid");
    assert_eq!(p.tasks[0].task_type, TaskType::Shell);
    assert_eq!(p.tasks[0].params["shell"], true);
    assert_eq!(p.tasks[1].params["file"], "b.py");
    assert_eq!(p.tasks[2].task_type, TaskType::Http);
}

#[test]
fn concurrency_keys_are_read_and_checked() {
    let p = parse_pipeline(
        "c.yaml",
        "name: c\ntasks:\n  - name: call\n    type: sleep\n    duration: 0s\n    concurrency: { key: \"cust-{{ input.customerId }}\", limit: 2 }\n",
    )
    .unwrap();
    let c = p.tasks[0].concurrency.clone().unwrap();
    assert_eq!(
        (c.key.as_str(), c.limit),
        ("cust-{{ input.customerId }}", Some(2))
    );
    assert_eq!(
        c.render(&serde_json::json!({"customerId": 42}), "r1", "c"),
        Ok("cust-42".to_string())
    );
    assert!(
        c.render(&serde_json::json!({}), "r1", "c")
            .unwrap_err()
            .contains("undefined")
    );
    let bad = errors(
        "name: c\ntasks:\n  - name: a\n    type: sleep\n    duration: 0s\n    concurrency: { key: \"{{ tasks.x.output }}\", limit: 2 }\n  - name: b\n    type: sleep\n    duration: 0s\n    concurrency: { key: k, limit: 0 }\n  - name: d\n    type: sleep\n    duration: 0s\n    concurrency: { limit: 3, per: 1 }\n",
    );
    assert_eq!(bad.len(), 4, "{bad:?}");
    assert_eq!(bad[0].0, 6);
    assert!(
        bad[0].1.contains("may use `input` and `run` only") && bad[0].1.contains("tasks"),
        "{bad:?}"
    );
    assert_eq!(bad[1].0, 10);
    assert!(
        bad[1]
            .1
            .contains("`concurrency.limit` must be a whole number"),
        "{bad:?}"
    );
    assert!(bad[2].1.contains("unknown key `per`"), "{bad:?}");
    assert!(bad[3].1.contains("needs a `key`"), "{bad:?}");
}

#[test]
fn rate_limits_are_read_and_checked() {
    let p = parse_pipeline(
        "r.yaml",
        "name: r\ntasks:\n  - name: call\n    type: sleep\n    duration: 0s\n    rate_limit: { key: \"openai-{{ input.org }}\", per: 1m, limit: 60 }\n",
    )
    .unwrap();
    let r = p.tasks[0].rate_limit.clone().unwrap();
    assert_eq!(
        (r.key.as_str(), r.per, r.limit),
        ("openai-{{ input.org }}", Duration::from_secs(60), 60)
    );
    assert_eq!(
        r.render(&serde_json::json!({"org": "acme"}), "r1", "r"),
        Ok("openai-acme".to_string())
    );
    let bad = errors(
        "name: r\ntasks:\n  - name: a\n    type: sleep\n    duration: 0s\n    rate_limit: { key: k, limit: 5 }\n  - name: b\n    type: sleep\n    duration: 0s\n    rate_limit: { key: \"{{ tasks.a.output }}\", per: soon, limit: 0, burst: 2 }\n",
    );
    assert_eq!(bad.len(), 5, "{bad:?}");
    assert_eq!(bad[0].0, 6);
    assert!(bad[0].1.contains("needs `per`"), "{bad:?}");
    assert!(bad.iter().all(|b| b.0 == 6 || b.0 == 10), "{bad:?}");
    let text: Vec<&str> = bad.iter().map(|b| b.1.as_str()).collect();
    for expected in [
        "unknown key `burst`",
        "`rate_limit.key` may use `input` and `run` only",
        "`rate_limit.per`",
        "`rate_limit.limit` must be a whole number",
    ] {
        assert!(
            text.iter().any(|t| t.contains(expected)),
            "{expected}: {bad:?}"
        );
    }
}

#[test]
fn for_each_is_read_and_checked() {
    let p = parse_pipeline(
        "m.yaml",
        "name: m\ntasks:\n  - name: list\n    type: sleep\n    duration: 0s\n  - name: each\n    needs: [list]\n    for_each: \"{{ tasks.list.output.items }}\"\n    allow_failures: 12.5%\n    fail_fast: true\n    type: sleep\n    duration: 0s\n",
    )
    .unwrap();
    let fe = p.tasks[1].for_each.clone().unwrap();
    assert_eq!(
        (fe.items.as_str(), fe.allow_failures, fe.fail_fast),
        ("{{ tasks.list.output.items }}", 12.5, true)
    );
    let bad = errors(
        "name: m\ntasks:\n  - name: a\n    type: sleep\n    duration: 0s\n    for_each: [1, 2]\n  - name: b\n    type: sleep\n    duration: 0s\n    for_each: \"{{ item }}\"\n    allow_failures: 150%\n  - name: c\n    type: sleep\n    duration: 0s\n    fail_fast: yes\n",
    );
    let text: Vec<&str> = bad.iter().map(|b| b.1.as_str()).collect();
    for expected in [
        "`for_each` must be a template that renders to a list",
        "`for_each` may use `input`, `tasks` and `run`",
        "`allow_failures` and `fail_fast` need `for_each`",
    ] {
        assert!(
            text.iter().any(|t| t.contains(expected)),
            "{expected}: {bad:?}"
        );
    }
    assert_eq!(bad[0].0, 6, "{bad:?}");
    assert_eq!(
        crate::pipeline::parent_of("each[17]"),
        Some(("each", 17)),
        "a child's name splits back"
    );
    assert_eq!(crate::pipeline::parent_of("each"), None);
}

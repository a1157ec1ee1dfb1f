//! Reading one located value as a name, string, list of names, retry policy, duration or
//! priority, each problem reported at its line.

use super::*;

impl Checker {
    pub(super) fn name(&mut self, v: &Located, what: &str) -> Option<String> {
        match v.value.as_str() {
            Some(s) if is_valid_name(s) => Some(s.to_owned()),
            Some(s) => {
                self.at(v, format!("{what} name `{}` may only use letters, digits, `-`, `_` and `.` (at most 128)", crate::echo::echo(s)));
                None
            }
            None => {
                self.at(
                    v,
                    format!("{what} name must be a string, not {}", short(&v.value)),
                );
                None
            }
        }
    }

    pub(super) fn string(&mut self, v: &Located, key: &str) -> Option<String> {
        match &v.value {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => {
                self.at(v, format!("`{key}` must be a string, not {}", short(other)));
                None
            }
        }
    }

    /// A task name or a list of them (`needs`, `allowed_next`), each with its location.
    pub(super) fn names(
        &mut self,
        v: &Located,
        task: &str,
        key: &str,
    ) -> (Vec<String>, Vec<Located>) {
        let items: Vec<Value> = match &v.value {
            Value::String(s) => vec![Value::String(s.clone())],
            Value::Array(a) => a.clone(),
            Value::Null => Vec::new(),
            other => {
                self.at(
                    v,
                    format!(
                        "task `{task}`: `{key}` must be a task name or a list of them, not {}",
                        short(other)
                    ),
                );
                return (Vec::new(), Vec::new());
            }
        };
        let mut names = Vec::new();
        let mut spans = Vec::new();
        for item in items {
            match item {
                Value::String(s) if !names.contains(&s) => {
                    names.push(s);
                    spans.push(v.clone());
                }
                Value::String(_) => {}
                other => self.at(
                    v,
                    format!(
                        "task `{task}`: `{key}` holds {}, not a task name",
                        short(&other)
                    ),
                ),
            }
        }
        (names, spans)
    }

    pub(super) fn retry(&mut self, v: &Located, base: &RetryPolicy) -> RetryPolicy {
        let mut p = base.clone();
        let Value::Object(map) = &v.value else {
            self.at(v, format!("`retry` must be a mapping (max_attempts, initial, factor, max_delay, jitter), not {}", short(&v.value)));
            return p;
        };
        for (key, value) in map {
            let here = Spanned {
                value: value.clone(),
                referenced: v.referenced,
                defined: v.defined,
            };
            match key.as_str() {
                "max_attempts" => match value.as_u64() {
                    Some(n @ 1..=10_000) => p.max_attempts = n as u32,
                    _ => self.at(v, format!("`retry.max_attempts` must be a whole number from 1 to 10000, not {}", short(value))),
                },
                "initial" => p.initial = self.duration(&here, "retry.initial").unwrap_or(p.initial),
                "max_delay" => p.max_delay = self.duration(&here, "retry.max_delay").unwrap_or(p.max_delay),
                "factor" => match value.as_f64() {
                    Some(f) if (1.0..=100.0).contains(&f) => p.factor = f,
                    _ => self.at(v, format!("`retry.factor` must be a number from 1 to 100, not {}", short(value))),
                },
                "jitter" => match value.as_bool() {
                    Some(b) => p.jitter = b,
                    None => self.at(v, format!("`retry.jitter` must be true or false, not {}", short(value))),
                },
                other => self.at(v, format!("unknown key `{other}` in `retry` (expected max_attempts, initial, factor, max_delay, jitter)")),
            }
        }
        p
    }

    pub(super) fn duration(&mut self, v: &Located, key: &str) -> Option<Duration> {
        let parsed = match &v.value {
            Value::String(s) => crate::duration::parse(s),
            Value::Number(n) => n
                .as_f64()
                .and_then(crate::duration::seconds)
                .ok_or_else(|| format!("{n} is not a valid number of seconds")),
            other => Err(format!(
                "expected a duration such as `30s`, not {}",
                short(other)
            )),
        };
        match parsed {
            Ok(d) => Some(d),
            Err(e) => {
                self.at(v, format!("`{key}`: {e}"));
                None
            }
        }
    }

    pub(super) fn positive_duration(&mut self, v: &Located, key: &str) -> Option<Duration> {
        let d = self.duration(v, key)?;
        if d < Duration::from_millis(10) {
            self.at(v, format!("`{key}` must be at least 10ms"));
            return None;
        }
        Some(d)
    }

    /// `concurrency: { key, limit }` (`limit` optional); the key may use the run's `input` and
    /// `run` only (it is rendered when the run is created, before any task has an output).
    pub(super) fn concurrency(&mut self, v: &Located, whose: &str) -> Option<Concurrency> {
        let Value::Object(map) = &v.value else {
            self.at(
                v,
                format!(
                    "{whose}: `concurrency` must be a mapping (key, limit), not {}",
                    short(&v.value)
                ),
            );
            return None;
        };
        for other in map.keys().filter(|k| *k != "key" && *k != "limit") {
            self.at(
                v,
                format!("{whose}: unknown key `{other}` in `concurrency` (expected key, limit)"),
            );
        }
        let key = self.key_template(v, map, whose, "concurrency")?;
        // Without a limit the key's named limit (`orbit limits set`) applies.
        let limit = match map.get("limit").map(|l| l.as_u64()) {
            Some(Some(n @ 1..=1_000_000)) => Some(n as u32),
            Some(_) => {
                self.at(v, format!("{whose}: `concurrency.limit` must be a whole number from 1 to 1000000, not {}", short(&map["limit"])));
                return None;
            }
            None => None,
        };
        Some(Concurrency { key, limit })
    }

    /// `rate_limit: { key, per, limit }`, all three required; the key as `concurrency`'s.
    pub(super) fn rate_limit(&mut self, v: &Located, whose: &str) -> Option<RateLimit> {
        let Value::Object(map) = &v.value else {
            self.at(
                v,
                format!(
                    "{whose}: `rate_limit` must be a mapping (key, per, limit), not {}",
                    short(&v.value)
                ),
            );
            return None;
        };
        for other in map
            .keys()
            .filter(|k| !["key", "per", "limit"].contains(&k.as_str()))
        {
            self.at(
                v,
                format!(
                    "{whose}: unknown key `{other}` in `rate_limit` (expected key, per, limit)"
                ),
            );
        }
        let key = self.key_template(v, map, whose, "rate_limit");
        let per = match map.get("per").map(|p| match p {
            Value::String(s) => crate::duration::parse(s),
            Value::Number(n) => n
                .as_f64()
                .and_then(crate::duration::seconds)
                .ok_or_else(|| format!("{n} is not a valid number of seconds")),
            other => Err(format!(
                "expected a duration such as `1s`, not {}",
                short(other)
            )),
        }) {
            Some(Ok(d))
                if d >= Duration::from_millis(1) && d <= Duration::from_secs(86_400 * 366) =>
            {
                Some(d)
            }
            Some(Ok(_)) => {
                self.at(
                    v,
                    format!("{whose}: `rate_limit.per` must be from 1ms to 366d"),
                );
                None
            }
            Some(Err(e)) => {
                self.at(v, format!("{whose}: `rate_limit.per`: {e}"));
                None
            }
            None => {
                self.at(
                    v,
                    format!("{whose}: `rate_limit` needs `per` (a duration such as `1s`)"),
                );
                None
            }
        };
        let limit = match map.get("limit").map(|l| l.as_u64()) {
            Some(Some(n @ 1..=1_000_000)) => Some(n as u32),
            Some(_) => {
                self.at(v, format!("{whose}: `rate_limit.limit` must be a whole number from 1 to 1000000, not {}", short(&map["limit"])));
                None
            }
            None => {
                self.at(
                    v,
                    format!("{whose}: `rate_limit` needs `limit` (attempts per `per`)"),
                );
                None
            }
        };
        Some(RateLimit {
            key: key?,
            per: per?,
            limit: limit?,
        })
    }

    /// `for_each` (a template over `input`, `tasks` and `run` that renders to a list), with its
    /// `allow_failures` (`10%` or a number of percent) and `fail_fast`, which need it.
    pub(super) fn for_each(
        &mut self,
        task: &str,
        items: Option<&Located>,
        allow: Option<&Located>,
        fail_fast: Option<&Located>,
    ) -> Option<ForEach> {
        let Some(items) = items else {
            for v in [allow, fail_fast].into_iter().flatten() {
                self.at(
                    v,
                    format!("task `{task}`: `allow_failures` and `fail_fast` need `for_each`"),
                );
            }
            return None;
        };
        let template = match &items.value {
            Value::String(t) if crate::template::is_template(t) => t.clone(),
            other => {
                self.at(items, format!("task `{task}`: `for_each` must be a template that renders to a list, such as \"{{{{ tasks.list.output.items }}}}\", not {}", short(other)));
                return None;
            }
        };
        if let Err(e) = crate::template::check_names(&template, &["input", "tasks", "run"]) {
            self.at(
                items,
                format!("task `{task}`: `for_each` may use `input`, `tasks` and `run`: {e}"),
            );
            return None;
        }
        let allow_failures = match allow.map(|a| &a.value) {
            None => 0.0,
            Some(v) => {
                let n = match v {
                    Value::String(s) => s
                        .trim()
                        .strip_suffix('%')
                        .and_then(|n| n.trim().parse::<f64>().ok()),
                    Value::Number(n) => n.as_f64(),
                    _ => None,
                };
                match n {
                    Some(n) if (0.0..=100.0).contains(&n) => n,
                    _ => {
                        self.at(allow?, format!("task `{task}`: `allow_failures` must be a share such as `10%` (0% to 100%), not {}", short(v)));
                        return None;
                    }
                }
            }
        };
        let fail_fast = match fail_fast.map(|f| &f.value) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.at(
                    fail_fast?,
                    format!(
                        "task `{task}`: `fail_fast` must be true or false, not {}",
                        short(other)
                    ),
                );
                return None;
            }
        };
        Some(ForEach {
            items: template,
            allow_failures,
            fail_fast,
        })
    }

    /// A mapping's `key`: a non-empty template over the run's `input` and `run` only (it is
    /// rendered when the run is created, before any task has an output).
    fn key_template(
        &mut self,
        v: &Located,
        map: &serde_json::Map<String, Value>,
        whose: &str,
        field: &str,
    ) -> Option<String> {
        let key = match map.get("key") {
            Some(Value::String(k)) if !k.trim().is_empty() => k.clone(),
            Some(other) => {
                self.at(
                    v,
                    format!(
                        "{whose}: `{field}.key` must be a non-empty string, not {}",
                        short(other)
                    ),
                );
                return None;
            }
            None => {
                self.at(v, format!("{whose}: `{field}` needs a `key`"));
                return None;
            }
        };
        if crate::template::is_template(&key)
            && let Err(e) = crate::template::check_names(&key, &["input", "run"])
        {
            self.at(v, format!("{whose}: `{field}.key` may use `input` and `run` only (it is rendered when the run is created): {e}"));
            return None;
        }
        Some(key)
    }

    pub(super) fn priority(&mut self, v: &Located) -> Option<i32> {
        match v.value.as_i64().and_then(|n| i32::try_from(n).ok()) {
            Some(p) => Some(p),
            None => {
                self.at(
                    v,
                    format!("`priority` must be a whole number, not {}", short(&v.value)),
                );
                None
            }
        }
    }
}

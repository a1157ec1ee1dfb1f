//! The task graph of a pipeline: execution order, layers, cycles and reachability.

use crate::pipeline::Pipeline;
use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::{HashMap, VecDeque};

/// The DAG of a pipeline whose `needs` all name existing tasks. Indices follow `pipeline.tasks`.
#[derive(Clone, Debug)]
pub struct Dag {
    names: Vec<String>,
    /// Name to index: looked up for every finished attempt, so not a scan.
    index: HashMap<String, usize>,
    /// `upstream[i]`: the tasks task `i` needs.
    upstream: Vec<Vec<usize>>,
    /// `downstream[i]`: the tasks that need task `i`.
    downstream: Vec<Vec<usize>>,
    /// A topological order.
    order: Vec<usize>,
}

/// Why a graph is not a DAG: each cycle, as the task names along it (first name repeated last).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe_cycles(.0))]
pub struct CycleError(pub Vec<Vec<String>>);

fn describe_cycles(cycles: &[Vec<String>]) -> String {
    cycles
        .iter()
        .map(|c| format!("cycle: {}", c.join(" -> ")))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Dag {
    /// Builds the graph. Every name in `needs` must name a task (validation checks that first);
    /// unknown names are ignored here.
    pub fn new(pipeline: &Pipeline) -> Result<Dag, CycleError> {
        let names: Vec<String> = pipeline.tasks.iter().map(|t| t.name.clone()).collect();
        let index: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let upstream: Vec<Vec<usize>> = pipeline
            .tasks
            .iter()
            .map(|t| {
                let mut ups: Vec<usize> = t
                    .needs
                    .iter()
                    .filter_map(|n| index.get(n.as_str()).copied())
                    .collect();
                ups.sort_unstable();
                ups.dedup();
                ups
            })
            .collect();
        Dag::from_edges(names, upstream)
    }

    /// Builds the graph from names and, for each task, the indices it needs.
    pub fn from_edges(names: Vec<String>, upstream: Vec<Vec<usize>>) -> Result<Dag, CycleError> {
        let n = names.len();
        let mut downstream = vec![Vec::new(); n];
        let mut graph = DiGraph::<usize, ()>::with_capacity(n, n);
        let nodes: Vec<NodeIndex> = (0..n).map(|i| graph.add_node(i)).collect();
        for (i, ups) in upstream.iter().enumerate() {
            for &u in ups {
                downstream[u].push(i);
                graph.add_edge(nodes[u], nodes[i], ());
            }
        }
        match toposort(&graph, None) {
            Ok(order) => Ok(Dag {
                index: names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.clone(), i))
                    .collect(),
                names,
                upstream,
                downstream,
                order: order.into_iter().map(|ix| graph[ix]).collect(),
            }),
            Err(_) => Err(CycleError(find_cycles(&names, &downstream, &graph))),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn upstream(&self, i: usize) -> &[usize] {
        &self.upstream[i]
    }

    pub fn downstream(&self, i: usize) -> &[usize] {
        &self.downstream[i]
    }

    /// A topological order: every task comes after all the tasks it needs.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Execution layers: layer 0 needs nothing, layer k needs something from layer k-1.
    /// Tasks within a layer can run in parallel.
    pub fn layers(&self) -> Vec<Vec<usize>> {
        let mut depth = vec![0usize; self.len()];
        for &i in &self.order {
            depth[i] = self.upstream[i]
                .iter()
                .map(|&u| depth[u] + 1)
                .max()
                .unwrap_or(0);
        }
        let mut layers: Vec<Vec<usize>> = vec![Vec::new(); depth.iter().max().map_or(0, |d| d + 1)];
        for (i, d) in depth.into_iter().enumerate() {
            layers[d].push(i);
        }
        layers
    }

    /// Every task reachable downstream of `i` (not `i` itself), in topological order.
    pub fn descendants(&self, i: usize) -> Vec<usize> {
        let mut seen = vec![false; self.len()];
        let mut queue = VecDeque::from([i]);
        while let Some(x) = queue.pop_front() {
            for &d in &self.downstream[x] {
                if !seen[d] {
                    seen[d] = true;
                    queue.push_back(d);
                }
            }
        }
        self.order.iter().copied().filter(|&x| seen[x]).collect()
    }
}

impl Dag {
    /// Every task upstream of `i` (not `i` itself).
    pub fn ancestors(&self, i: usize) -> Vec<usize> {
        let mut seen = vec![false; self.len()];
        let mut stack = vec![i];
        while let Some(x) = stack.pop() {
            for &u in &self.upstream[x] {
                if !seen[u] {
                    seen[u] = true;
                    stack.push(u);
                }
            }
        }
        (0..self.len()).filter(|&x| seen[x]).collect()
    }

    /// When dead task `target` is retried, the tasks downstream of it that can run again: those
    /// with no other dead task upstream (they would wait for it forever).
    pub fn revived_by(&self, target: usize, is_dead: impl Fn(usize) -> bool) -> Vec<usize> {
        self.descendants(target)
            .into_iter()
            .filter(|&d| {
                self.ancestors(d)
                    .into_iter()
                    .all(|a| a == target || !is_dead(a))
            })
            .collect()
    }
}

/// Names each cycle: one per strongly connected component that loops, walked from its first
/// task in file order along a shortest way back to it.
fn find_cycles(
    names: &[String],
    downstream: &[Vec<usize>],
    graph: &DiGraph<usize, ()>,
) -> Vec<Vec<String>> {
    let mut cycles = Vec::new();
    let mut components: Vec<Vec<usize>> = tarjan_scc(graph)
        .into_iter()
        .map(|c| {
            let mut c: Vec<usize> = c.into_iter().map(|ix| graph[ix]).collect();
            c.sort_unstable();
            c
        })
        .filter(|c| c.len() > 1 || downstream[c[0]].contains(&c[0]))
        .collect();
    components.sort();
    for comp in components {
        let start = comp[0];
        let in_comp = |x: usize| comp.binary_search(&x).is_ok();
        let mut parent: HashMap<usize, usize> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        let mut closing = None;
        'bfs: while let Some(x) = queue.pop_front() {
            for &d in &downstream[x] {
                if d == start {
                    closing = Some(x);
                    break 'bfs;
                }
                if in_comp(d) && !parent.contains_key(&d) {
                    parent.insert(d, x);
                    queue.push_back(d);
                }
            }
        }
        let mut path = vec![start];
        let mut cur = closing.unwrap_or(start);
        let mut back = Vec::new();
        while cur != start {
            back.push(cur);
            cur = parent[&cur];
        }
        path.extend(back.into_iter().rev());
        path.push(start);
        cycles.push(path.into_iter().map(|i| names[i].clone()).collect());
    }
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i}")).collect()
    }

    #[test]
    fn layers_of_a_diamond() {
        let dag = Dag::from_edges(names(4), vec![vec![], vec![0], vec![0], vec![1, 2]]).unwrap();
        assert_eq!(dag.layers(), vec![vec![0], vec![1, 2], vec![3]]);
        assert_eq!(dag.descendants(1), vec![3]);
        assert_eq!(dag.descendants(0).len(), 3);
    }

    #[test]
    fn retrying_one_dead_task_revives_only_what_no_other_dead_task_blocks() {
        // t0 dead, t1 dead; t2 needs t0; t3 needs t0 and t1; t4 needs t2
        let dag =
            Dag::from_edges(names(5), vec![vec![], vec![], vec![0], vec![0, 1], vec![2]]).unwrap();
        assert_eq!(dag.revived_by(0, |x| x == 0 || x == 1), vec![2, 4]);
        assert_eq!(dag.ancestors(4), vec![0, 2]);
    }

    #[test]
    fn names_the_tasks_on_a_cycle() {
        // t0 -> t1 -> t2 -> t0, t3 independent
        let err = Dag::from_edges(names(4), vec![vec![2], vec![0], vec![1], vec![]]).unwrap_err();
        assert_eq!(err.0, vec![vec!["t0", "t1", "t2", "t0"]]);
        assert_eq!(err.to_string(), "cycle: t0 -> t1 -> t2 -> t0");
    }

    #[test]
    fn self_loop_is_a_cycle() {
        let err = Dag::from_edges(names(2), vec![vec![0], vec![]]).unwrap_err();
        assert_eq!(err.0, vec![vec!["t0", "t0"]]);
    }

    /// Reference cycle check: three-colour depth-first search.
    fn has_cycle_reference(upstream: &[Vec<usize>]) -> bool {
        fn visit(x: usize, up: &[Vec<usize>], colour: &mut [u8]) -> bool {
            colour[x] = 1;
            for &u in &up[x] {
                if colour[u] == 1 || (colour[u] == 0 && visit(u, up, colour)) {
                    return true;
                }
            }
            colour[x] = 2;
            false
        }
        let mut colour = vec![0u8; upstream.len()];
        (0..upstream.len()).any(|i| colour[i] == 0 && visit(i, upstream, &mut colour))
    }

    fn graph(max: usize) -> impl Strategy<Value = Vec<Vec<usize>>> {
        (1..max)
            .prop_flat_map(|n| proptest::collection::vec(proptest::collection::vec(0..n, 0..4), n))
    }

    proptest! {
        #[test]
        fn order_respects_every_edge_of_random_dags(edges in graph(40)) {
            // keep only edges from a lower index: always acyclic
            let up: Vec<Vec<usize>> = edges.iter().enumerate()
                .map(|(i, ups)| { let mut v: Vec<usize> = ups.iter().copied().filter(|&u| u < i).collect(); v.sort(); v.dedup(); v })
                .collect();
            let dag = Dag::from_edges(names(up.len()), up.clone()).unwrap();
            let pos: HashMap<usize, usize> = dag.order().iter().enumerate().map(|(p, &i)| (i, p)).collect();
            prop_assert_eq!(pos.len(), up.len());
            for (i, ups) in up.iter().enumerate() {
                for &u in ups { prop_assert!(pos[&u] < pos[&i]); }
            }
            let layers = dag.layers();
            prop_assert_eq!(layers.iter().map(Vec::len).sum::<usize>(), up.len());
        }

        #[test]
        fn cycle_detection_matches_reference(edges in graph(12)) {
            let up: Vec<Vec<usize>> = edges.into_iter().map(|mut v| { v.sort(); v.dedup(); v }).collect();
            let result = Dag::from_edges(names(up.len()), up.clone());
            prop_assert_eq!(result.is_err(), has_cycle_reference(&up));
            if let Err(CycleError(cycles)) = result {
                for cycle in cycles {
                    // each named cycle is a real closed walk along `needs` edges reversed
                    prop_assert_eq!(cycle.first(), cycle.last());
                    for w in cycle.windows(2) {
                        let from: usize = w[0][1..].parse().unwrap();
                        let to: usize = w[1][1..].parse().unwrap();
                        prop_assert!(up[to].contains(&from));
                    }
                }
            }
        }
    }
}

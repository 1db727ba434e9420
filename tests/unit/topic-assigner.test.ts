// order: "topic" across instances: whole topics per member (never a topic's partitions on two
// members), spread evenly, and a topic stays with the member that held it while the split stays even.
import { expect, test } from "bun:test";
import { assignTopics, type TopicMember } from "../../src/kafka/topic-assigner.ts";

const member = (memberId: string, held: string[] = [], topics = ["a", "b", "c"]): TopicMember => ({ memberId, topics, held });
const plain = (m: Map<string, string[]>) => Object.fromEntries(m);

test("topics are spread whole over the members, in name order to the one with the fewest", () => {
  expect(plain(assignTopics([member("m2"), member("m1")], ["c", "a", "b"]))).toEqual({ m1: ["a", "c"], m2: ["b"] });
  expect(plain(assignTopics([member("m1")], ["a", "b", "c"]))).toEqual({ m1: ["a", "b", "c"] });
  // More members than topics: some get none.
  expect(plain(assignTopics([member("m1"), member("m2"), member("m3"), member("m4")], ["a", "b"]))).toEqual({ m1: ["a"], m2: ["b"], m3: [], m4: [] });
  expect(plain(assignTopics([], ["a"]))).toEqual({});
});

test("a topic stays with its holder while the split stays even; a joining member gets what is over", () => {
  // m9 held everything; m1 joins: m9 keeps its first two (quota 2), m1 gets the rest.
  expect(plain(assignTopics([member("m9", ["a", "b", "c"]), member("m1")], ["a", "b", "c"]))).toEqual({ m1: ["c"], m9: ["a", "b"] });
  // A member joining a one-topic group does not take the topic from its holder.
  expect(plain(assignTopics([member("m9", ["a"], ["a"]), member("m1", [], ["a"])], ["a"]))).toEqual({ m1: [], m9: ["a"] });
  // Its holder left: the topic goes to the member with the fewest.
  expect(plain(assignTopics([member("m2", ["b"]), member("m3", ["c"])], ["a", "b", "c"]))).toEqual({ m2: ["b", "a"], m3: ["c"] });
  // Two members claiming a topic (a stale claim): the first by id keeps it, once.
  expect(plain(assignTopics([member("m2", ["a"]), member("m1", ["a"])], ["a", "b"]))).toEqual({ m1: ["a"], m2: ["b"] });
});

test("a topic goes only to a member that subscribes to it", () => {
  const ms = [member("m1", [], ["a"]), member("m2", ["b"], ["a"]), member("m3", [], ["b"])];
  expect(plain(assignTopics(ms, ["a", "b"]))).toEqual({ m1: ["a"], m2: [], m3: ["b"] });
  // Nobody subscribes to it: it is not assigned.
  expect(plain(assignTopics([member("m1", [], ["a"])], ["a", "z"]))).toEqual({ m1: ["a"] });
});
